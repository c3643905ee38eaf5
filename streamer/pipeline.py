"""Wires one source, its stages and its sinks; owns the threads, the queue and the stop.

::

    capture thread: source.blocks() ──▶ bounded queue ──▶ processing thread: stages ──▶ sinks
                                                                                  (own threads)

A live source never waits: when the queue is full the overflow policy drops a
block and counts it. A lossless source (a file) waits for room, so every input
sample reaches the sinks. A stop request ends the source at the next block;
what is queued is still processed and the sinks are finalised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from contextlib import ExitStack
from fractions import Fraction
from typing import Any

import numpy as np

from streamer.block import Block, StreamLayout
from streamer.config import Config
from streamer.errors import ConfigError
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.sinks.base import Sink
from streamer.sinks.event_audio import EventClipper
from streamer.sinks.events import EventWriter
from streamer.sinks.publisher import Publisher, PublishHub
from streamer.sinks.speaker import SpeakerMonitor
from streamer.sinks.wav import WavWriter
from streamer.sources import Source, open_source
from streamer.stages import Stage, build_stages, chain_latency_s, chain_layouts

__all__ = ["Pipeline", "SharedProcessor", "build_pipeline"]

_END = object()
log = logging.getLogger("streamer")


class Pipeline:
    """A running stream: source → queue → stages → sinks.

    Use ``start()``, then ``wait()`` until ``done`` (the source ended, a stop
    was requested and the queue drained, or something failed: see ``error``),
    then ``close()``.

    ``out_layout`` is the layout the stages output (the source's unless a stage
    changes it, a resample): the sinks must be built for it. Metrics count the
    source's frames at its rate; a block's period and deadline are those of the
    block the source gave.
    """

    def __init__(
        self,
        cfg: Config,
        source: Source,
        stages: list[Stage],
        sinks: list[Sink],
        metrics: StreamMetrics,
        publisher: Publisher | None = None,
        processor: SharedProcessor | None = None,
    ):
        self.cfg = cfg
        self.source = source
        self.stages = stages
        self.sinks = sinks
        self.metrics = metrics
        self.publisher = publisher
        self.out_layout: StreamLayout = chain_layouts(stages, source.layout)[-1]
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._draining_ended = threading.Event()  # the processing thread takes no more items
        self._queue: queue.Queue[Block | object] = queue.Queue(maxsize=cfg.pipeline.queue_blocks)
        self._stage_ns = [0] * len(stages)
        self._stage_names = tuple(stage.name for stage in stages)
        self._pending_stages: list[Stage] | None = None
        self._pending_lock = threading.Lock()
        self._cpu_start_s = time.process_time()
        self._processor = processor
        self._started = False
        self._threads = [threading.Thread(target=self._capture_loop, name="capture", daemon=True)]
        if processor is None:
            self._threads.append(
                threading.Thread(target=self._processing_loop, name="processing", daemon=True)
            )

    def _latency(self) -> Fraction:
        layout = self.source.layout
        return Fraction(self.cfg.pipeline.block, layout.rate) + chain_latency_s(self.stages, layout)

    @property
    def algorithmic_latency_s(self) -> float:
        """The block's period plus every stage's declared latency, seconds; each stage
        declares its own in samples at its input rate, which a resample before it changed."""
        return float(self._latency())

    @property
    def algorithmic_latency(self) -> int:
        """`algorithmic_latency_s` in samples at the source rate, rounded up (exactly the
        block plus the stages' latencies when no stage changes the rate)."""
        return math.ceil(self._latency() * self.source.layout.rate)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._cpu_start_s = time.process_time()
        self._started = True
        if self._processor is not None:
            self._processor.add(self)
        for thread in self._threads:
            thread.start()

    def replace_stages(self, stages: list[Stage]) -> None:
        """Swap the stage chain between two blocks (a config reload): the stream goes on.

        Safe from any thread: the processing thread picks the new chain up
        before its next block.

        Raises
        ------
        ConfigError
            The new chain outputs another layout (a resample to another rate): the
            sinks were opened for this one, so that waits for a restart.
        """
        out = chain_layouts(stages, self.source.layout)[-1]
        if out != self.out_layout:
            raise ConfigError(
                f"the stages would output {out.channels} ch at {out.rate} Hz, the sinks were "
                f"opened for {self.out_layout.channels} ch at {self.out_layout.rate} Hz; "
                "that applies at the next restart",
                key="stages",
            )
        with self._pending_lock:
            self._pending_stages = stages

    def request_stop(self) -> None:
        """Ask the source to stop; queued blocks are still processed. Safe from a signal handler."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def close(self) -> None:
        """Stop, join the threads and release the source. Sinks close on the processing
        thread as it ends; a pipeline that never started closes them here."""
        self.request_stop()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        if self._processor is not None and self._started:
            self.done.wait()  # the shared thread takes the end and closes the sinks
        if not self.done.is_set():
            for sink in self.sinks:
                sink.close()
        self.source.close()

    def snapshot(self) -> dict[str, Any]:
        """The metrics snapshot plus what only the pipeline knows: its algorithmic
        latency, and the process's CPU time per second of signal (as `streamer bench`
        reports it)."""
        snap = self.metrics.snapshot(queue_depth=self.queue_depth)
        snap["algorithmic_latency_samples"] = self.algorithmic_latency
        snap["algorithmic_latency_ms"] = round(self.algorithmic_latency_s * 1e3, 4)
        snap["source"] = self.source.health()
        signal_s = snap["signal_s"]
        cpu_s = time.process_time() - self._cpu_start_s
        snap["cpu_per_signal_s"] = round(cpu_s / signal_s, 6) if signal_s else None
        return snap

    # ------------------------------------------------------------- threads

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._stop.set()

    def _capture_loop(self) -> None:
        live = self.source.live
        try:
            for block in self.source.blocks(self.cfg.pipeline.block, self._stop):
                if live:
                    self._offer(block)
                elif not self._put_waiting(block):
                    return
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._put_waiting(_END)

    def _offer(self, block: Block) -> None:
        """Queue a live block without waiting; on overflow drop per policy and count."""
        try:
            self._queue.put_nowait(block)
            self._wake()
            return
        except queue.Full:
            self.metrics.record_drop()
        if self.cfg.pipeline.overflow == "drop-oldest":
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            with contextlib.suppress(queue.Full):  # only this thread adds
                self._queue.put_nowait(block)

    def _put_waiting(self, item: Block | object) -> bool:
        """Queue losslessly; False when the processing thread has stopped taking items."""
        while not self._draining_ended.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                self._wake()
                return True
            except queue.Full:
                continue
        return False

    def _wake(self) -> None:
        if self._processor is not None:
            self._processor.wake()

    def _processing_loop(self) -> None:
        try:
            while self._take(self._queue.get()):
                pass
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._finish()

    def serve_queued(self) -> bool | None:
        """Process one queued item, for a `SharedProcessor`: None when none is queued,
        True when the stream goes on, False once it has ended (sinks closed, ``done``)."""
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return None
        try:
            going = self._take(item)
        except BaseException as exc:
            self._fail(exc)
            going = False
        if not going:
            self._finish()
        return going

    def _take(self, item: Block | object) -> bool:
        """Process one queued item; False at the end of the stream."""
        if item is _END:
            return False
        assert isinstance(item, Block)
        self._process(item)
        return True

    def _finish(self) -> None:
        """No more items: close the sinks (their errors are the stream's) and say done."""
        self._draining_ended.set()
        for sink in self.sinks:
            try:
                sink.close()
            except BaseException as exc:
                self._fail(exc)
        self.done.set()

    def _process(self, block: Block) -> None:
        if self._pending_stages is not None:
            with self._pending_lock:
                self.stages, self._pending_stages = self._pending_stages, None
            self._stage_ns = [0] * len(self.stages)
            self._stage_names = tuple(stage.name for stage in self.stages)
        start_ns = time.perf_counter_ns()
        queue_ns = time.monotonic_ns() - block.captured_ns
        nonfinite = _sanitise(block)
        # The source's block sets the period and counts in metrics (a resample changes both
        # its frames and its rate, not the time it covers).
        frames, period_ns = block.frames, block.frames * 1_000_000_000 // block.rate
        for i, stage in enumerate(self.stages):
            t_ns = time.perf_counter_ns()
            try:
                block = stage.process(block)
            except Exception as exc:
                if self.cfg.pipeline.on_stage_error == "stop":
                    raise
                self._skip_block(stage, block, exc)
                return
            self._stage_ns[i] = time.perf_counter_ns() - t_ns
        timing = BlockTiming(
            queue_ns=queue_ns,
            processing_ns=time.perf_counter_ns() - start_ns,
            stage_ns=tuple(self._stage_ns),
            period_ns=period_ns,
            nonfinite=nonfinite,
            stage_names=self._stage_names,
        )
        self.metrics.record_block(frames, timing)
        for sink in self.sinks:
            sink.consume(block, timing)

    def _skip_block(self, stage: Stage, block: Block, exc: Exception) -> None:
        """``on_stage_error = "skip"``: drop the block (a gap in ``seq`` downstream), count
        it, and reset the stage so that nothing half-done stays in its state."""
        count = self.metrics.record_stage_error(stage.name)
        if count <= 10 or count % 1000 == 0:  # logged, but never a flood
            log.error(
                "stage %r failed on block %d (%s: %s); block dropped, stage reset (%d so far)",
                stage.name, block.seq, type(exc).__name__, exc, count,
            )  # fmt: skip
        stage.reset()


def _sanitise(block: Block) -> int:
    """Replace NaN and infinity by 0 in place so they never enter filter state; return the count.

    The sum is a cheap, allocation-free test for the common all-finite case.
    """
    if math.isfinite(float(np.add.reduce(block.samples, axis=None))):
        return 0
    bad = ~np.isfinite(block.samples)
    count = int(bad.sum())
    block.samples[bad] = 0.0
    return count


class SharedProcessor:
    """One processing thread for the streams of a daemon, instead of one per stream.

    Each stream keeps its queue, its drop policy and its failures; the thread
    takes one block at a time from whichever stream has one, in turn. Streams
    run in one interpreter, whose lock serialises their Python work anyway: a
    thread per stream only adds switching between them, which with many
    streams costs more than the work (docs/daemon.md). A stage that blocks
    holds up every stream sharing the thread.
    """

    def __init__(self) -> None:
        self._ready = threading.Semaphore(0)  # one release per queued item (or more)
        self._lock = threading.Lock()
        self._pipelines: list[Pipeline] = []
        self._thread: threading.Thread | None = None
        self._next = 0

    def add(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipelines.append(pipeline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="processing", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._ready.release()

    def _loop(self) -> None:
        while True:
            self._ready.acquire(timeout=0.2)
            with self._lock:
                if not self._pipelines:
                    self._thread = None
                    return
                pipelines = list(self._pipelines)
            # Fair turns: start after the stream served last.
            for k in range(len(pipelines)):
                pipeline = pipelines[(self._next + k) % len(pipelines)]
                served = pipeline.serve_queued()
                if served is None:
                    continue
                self._next = (self._next + k + 1) % len(pipelines)
                if not served:
                    with self._lock:
                        self._pipelines.remove(pipeline)
                break


def build_pipeline(
    cfg: Config,
    *,
    publish: bool,
    hub: PublishHub | None = None,
    processor: SharedProcessor | None = None,
) -> Pipeline:
    """Open the source, build the stages and sinks; any refusal happens here, before threads.

    With ``publish``, the stream publishes on ``hub`` (a socket several streams
    share), or on a socket of its own bound from ``cfg.publish``; with
    ``processor``, its blocks are processed on that shared thread.

    Raises
    ------
    StreamerError
        A bad input file, a config value the stream's layout refuses, an
        endpoint that cannot be bound, an output file that cannot be created.
    """
    with ExitStack() as cleanup:
        source = open_source(cfg.source, cfg.stream)
        cleanup.callback(source.close)
        stages = build_stages(cfg.stages, source.layout, block=cfg.pipeline.block)
        names = [stage.name for stage in stages]
        metrics = StreamMetrics(cfg.stream, source.layout.rate, names, cfg.pipeline.block)
        # The sinks take what the last stage outputs: another rate after a resample.
        out_layout = chain_layouts(stages, source.layout)[-1]
        sinks: list[Sink] = []
        if cfg.output.wav is not None:
            wav = WavWriter(cfg.output.wav, out_layout, metrics, lossless=not source.live)
            cleanup.callback(wav.close)
            sinks.append(wav)
        if (events_path := cfg.output.events) is not None:
            out = cfg.output
            clipper = None
            if out.event_audio:
                clipper = EventClipper(
                    out_layout.channels,
                    out_layout.rate,
                    pre_roll_s=out.event_pre_roll_s,
                    post_roll_s=out.event_post_roll_s,
                    max_s=out.event_max_s,
                )
            events = EventWriter(
                events_path, cfg.stream, metrics, lossless=not source.live, clipper=clipper
            )
            cleanup.callback(events.close)
            sinks.append(events)
        if cfg.output.monitor:
            out_block = -(-cfg.pipeline.block * out_layout.rate // source.layout.rate)
            monitor = SpeakerMonitor(cfg.output, out_layout, metrics, out_block)
            cleanup.callback(monitor.close)
            sinks.append(monitor)
        publisher = None
        if publish:
            own = hub or PublishHub(cfg.publish)  # a single stream binds a socket of its own
            publisher = Publisher(own, cfg.stream, metrics, meta=source.metadata)
            cleanup.callback(publisher.close)
            sinks.append(publisher)
        cleanup.pop_all()
    return Pipeline(cfg, source, stages, sinks, metrics, publisher, processor)
