"""The pipeline's threads and queue: live drops counted, lossless delivery, stops and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from streamer.block import Block, StreamLayout
from streamer.config import Config, parse_config
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.pipeline import Pipeline, SharedProcessor
from streamer.stages.base import Stage

LAYOUT = StreamLayout(channels=1, rate=8000)


class ListSource:
    """Yields ``n`` blocks of ``size`` frames at once, as fast as it can."""

    def __init__(self, n: int, size: int, *, live: bool, nan_at: int | None = None):
        self.layout = LAYOUT
        self.live = live
        self.total_frames = n * size
        self._n, self._size, self._nan_at = n, size, nan_at
        self.closed = False

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        for seq in range(self._n):
            if stop.is_set():
                return
            samples = np.full((1, self._size), float(seq), dtype=np.float32)
            if seq == self._nan_at:
                samples[0, ::2] = np.nan
            yield Block(samples, "test", seq, seq * self._size, LAYOUT.rate, time.monotonic_ns())

    def health(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        self.closed = True


class SlowStage:
    name = "slow"
    latency = 0

    def __init__(self, seconds: float, fail_at: int | None = None):
        self._seconds, self._fail_at = seconds, fail_at

    def process(self, block: Block) -> Block:
        if block.seq == self._fail_at:
            raise RuntimeError(f"stage broke on block {block.seq}")
        time.sleep(self._seconds)
        return block

    def reset(self) -> None:
        pass


class ListSink:
    name = "list"

    def __init__(self, fail_at: int | None = None) -> None:
        self.blocks: list[Block] = []
        self.closed = False
        self._fail_at = fail_at

    def consume(self, block: Block, timing: BlockTiming) -> None:
        if block.seq == self._fail_at:
            raise OSError(28, "No space left on device")
        self.blocks.append(block)

    def close(self) -> None:
        self.closed = True


def make(
    source: ListSource,
    stages: list[Stage],
    sink: ListSink,
    processor: SharedProcessor | None = None,
    **pipeline: object,
) -> Pipeline:
    cfg: Config = parse_config({"pipeline": {"queue_blocks": 4, **pipeline}}, environ={})
    metrics = StreamMetrics("test", LAYOUT.rate, [s.name for s in stages], 16)
    return Pipeline(cfg, source, stages, [sink], metrics, None, processor)  # type: ignore[list-item]


def run_to_end(pipeline: Pipeline) -> None:
    pipeline.start()
    assert pipeline.wait(timeout=20), "pipeline did not finish"
    pipeline.close()


def seqs(sink: ListSink) -> list[int]:
    return [b.seq for b in sink.blocks]


def test_live_source_drops_oldest_and_counts_every_drop() -> None:
    source, sink = ListSource(200, 16, live=True), ListSink()
    pipeline = make(source, [SlowStage(0.002)], sink)
    run_to_end(pipeline)
    got = seqs(sink)
    snap = pipeline.snapshot()
    assert snap["dropped_blocks"] > 0
    assert len(got) + snap["dropped_blocks"] == 200
    assert got == sorted(got) and got[-1] == 199  # drop-oldest keeps the newest
    assert sink.closed and source.closed and pipeline.error is None


def test_live_source_drop_newest_keeps_the_first_blocks() -> None:
    source, sink = ListSource(200, 16, live=True), ListSink()
    pipeline = make(source, [SlowStage(0.002)], sink, overflow="drop-newest")
    run_to_end(pipeline)
    got = seqs(sink)
    assert got[:4] == [0, 1, 2, 3]
    assert len(got) + pipeline.snapshot()["dropped_blocks"] == 200


def test_lossless_source_waits_and_loses_nothing() -> None:
    source, sink = ListSource(200, 16, live=False), ListSink()
    pipeline = make(source, [SlowStage(0.0005)], sink)
    run_to_end(pipeline)
    assert seqs(sink) == list(range(200))
    snap = pipeline.snapshot()
    assert snap["dropped_blocks"] == 0 and snap["frames"] == 200 * 16


def test_stop_request_drains_the_queue_and_closes_sinks() -> None:
    source, sink = ListSource(10_000, 16, live=False), ListSink()
    pipeline = make(source, [SlowStage(0.001)], sink)
    pipeline.start()
    time.sleep(0.05)
    pipeline.request_stop()
    assert pipeline.wait(timeout=5)
    pipeline.close()
    got = seqs(sink)
    assert 0 < len(got) < 10_000
    assert got == list(range(len(got)))  # contiguous up to the last processed block
    assert sink.closed and pipeline.error is None


def test_nonfinite_samples_are_zeroed_and_counted() -> None:
    source, sink = ListSource(4, 16, live=False, nan_at=2), ListSink()
    pipeline = make(source, [], sink)
    run_to_end(pipeline)
    assert np.isfinite(sink.blocks[2].samples).all()
    assert pipeline.snapshot()["nonfinite_samples"] == 8


def test_a_failing_stage_stops_the_pipeline_with_its_error() -> None:
    source, sink = ListSource(100, 16, live=False), ListSink()
    pipeline = make(source, [SlowStage(0.0, fail_at=10)], sink)
    run_to_end(pipeline)
    assert isinstance(pipeline.error, RuntimeError)
    assert "block 10" in str(pipeline.error)
    assert seqs(sink) == list(range(10)) and sink.closed


def test_a_failing_sink_stops_the_pipeline_with_its_error() -> None:
    source, sink = ListSource(100, 16, live=False), ListSink(fail_at=5)
    pipeline = make(source, [], sink)
    run_to_end(pipeline)
    assert isinstance(pipeline.error, OSError)
    with pytest.raises(OSError, match="No space left"):
        raise pipeline.error


def test_timing_is_recorded_per_stage() -> None:
    source, sink = ListSource(20, 16, live=False), ListSink()
    pipeline = make(source, [SlowStage(0.001)], sink)
    run_to_end(pipeline)
    snap = pipeline.snapshot()
    assert snap["stages_ms"]["slow"]["p50"] >= 1.0
    assert snap["processing_ms"]["p50"] >= snap["stages_ms"]["slow"]["p50"] * 0.99
    # 16 frames at 8 kHz is a 2 ms period: a 1 ms stage keeps up.
    assert snap["deadline_misses"] < 20


class FlakyStage:
    """Raises on chosen blocks; records resets."""

    name = "flaky"
    latency = 0

    def __init__(self, fail_on: set[int]):
        self._fail_on = fail_on
        self.resets = 0

    def process(self, block: Block) -> Block:
        if block.seq in self._fail_on:
            raise ValueError(f"bad block {block.seq}")
        return block

    def reset(self) -> None:
        self.resets += 1


def test_skip_policy_drops_the_block_resets_the_stage_and_goes_on() -> None:
    source, sink, stage = ListSource(50, 16, live=False), ListSink(), FlakyStage({3, 7})
    pipeline = make(source, [stage], sink, on_stage_error="skip")
    run_to_end(pipeline)
    assert pipeline.error is None
    assert seqs(sink) == [s for s in range(50) if s not in (3, 7)]
    assert stage.resets == 2
    assert pipeline.snapshot()["stage_errors"] == {"flaky": 2}


def test_stop_policy_is_the_default() -> None:
    source, sink = ListSource(50, 16, live=False), ListSink()
    pipeline = make(source, [FlakyStage({3})], sink)
    run_to_end(pipeline)
    assert isinstance(pipeline.error, ValueError) and seqs(sink) == [0, 1, 2]


class RaisingSource(ListSource):
    """Yields a few blocks, then fails as a broken reader would."""

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        for i, block in enumerate(super().blocks(block_size, stop)):
            if i == 5:
                raise OSError(5, "Input/output error")
            yield block


def test_a_failing_source_stops_the_stream_and_finalises_the_sinks() -> None:
    source, sink = RaisingSource(50, 16, live=False), ListSink()
    pipeline = make(source, [], sink)
    run_to_end(pipeline)
    assert isinstance(pipeline.error, OSError)
    assert seqs(sink) == [0, 1, 2, 3, 4] and sink.closed and source.closed


def test_empty_and_short_blocks_through_the_fir_equal_lfilter() -> None:
    import scipy.signal

    from streamer.config import FirConfig
    from streamer.stages.fir import FirStage

    rng = np.random.default_rng(3)
    x = rng.standard_normal(3000).astype(np.float32)
    sizes = [0, 1, 0, 7, 256, 0, 1000, 3, 1733]  # what a flaky source might hand over
    assert sum(sizes) == x.size

    class Irregular(ListSource):
        def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
            t0 = 0
            for seq, n in enumerate(sizes):
                yield Block(x[None, t0 : t0 + n].copy(), "t", seq, t0, LAYOUT.rate, 0)
                t0 += n

    stage = FirStage(FirConfig(design="lowpass", cutoff_hz=1000.0, numtaps=63), LAYOUT)
    sink = ListSink()
    pipeline = make(Irregular(0, 0, live=False), [stage], sink)  # type: ignore[list-item]
    run_to_end(pipeline)
    y = np.concatenate([b.samples[0] for b in sink.blocks])
    want = scipy.signal.lfilter(stage.taps[0], 1.0, x.astype(np.float64))
    assert np.max(np.abs(y - want)) <= 1e-5 * np.max(np.abs(want))


def test_a_device_failing_mid_stream_exits_1_not_2() -> None:
    """DeviceError at start-up is the user's to fix (exit 2); mid-stream it is a failure (1)."""
    from streamer.cli._runner import drive
    from streamer.errors import DeviceError

    class BrokenDevice(ListSource):
        def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
            yield from list(super().blocks(block_size, stop))[:3]
            raise DeviceError("audio callback failed: OSError()")

    pipeline = make(BrokenDevice(10, 16, live=True), [], ListSink())
    with pytest.raises(RuntimeError, match="stream 'main' failed: audio callback failed"):
        drive([pipeline], progress=False)


def test_streams_on_a_shared_processor_each_keep_their_blocks_and_failures() -> None:
    """Three streams on one processing thread: a lossless one gets every block in order, a
    live one behind a slow stage drops and counts, a failing one stops alone."""
    processor = SharedProcessor()
    sinks = [ListSink(), ListSink(), ListSink()]
    lossless = make(ListSource(200, 16, live=False), [], sinks[0], processor)
    live = make(ListSource(200, 16, live=True), [SlowStage(0.002)], sinks[1], processor)
    failing = make(ListSource(200, 16, live=False), [SlowStage(0, fail_at=50)], sinks[2], processor)
    pipelines = [lossless, live, failing]
    for pipeline in pipelines:
        pipeline.start()
    for pipeline in pipelines:
        assert pipeline.wait(timeout=20), "a stream did not finish"
        pipeline.close()
    assert seqs(sinks[0]) == list(range(200)) and lossless.error is None
    assert 0 < len(sinks[1].blocks) < 200 and live.error is None
    assert len(sinks[1].blocks) + live.metrics.dropped_blocks == 200
    assert seqs(sinks[2]) == list(range(50)) and "block 50" in str(failing.error)
    assert all(sink.closed for sink in sinks)
