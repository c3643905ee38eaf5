"""Drives built pipelines from the main thread: signals, status lines, progress, summary."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from streamer.config import Config
from streamer.errors import ConfigError, InputFileError, StreamerError
from streamer.metrics import status_line
from streamer.pipeline import Pipeline, SharedProcessor, build_pipeline
from streamer.sinks.publisher import PublishHub
from streamer.stages import chain_layouts

__all__ = ["build", "drive", "summary_lines"]

log = logging.getLogger("streamer")


@contextmanager
def _handle_signals(
    pipelines: Sequence[Pipeline], reload_asked: threading.Event | None
) -> Iterator[None]:
    """SIGINT/SIGTERM ask every stream for a graceful stop, a second one aborts at once;
    SIGHUP, when the command can reload, asks for a config reload (done on the main
    loop, not here)."""
    asked = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal asked
        if asked:
            raise KeyboardInterrupt
        asked = True
        log.info("%s: stopping after the queued blocks", signal.Signals(signum).name)
        for pipeline in pipelines:
            pipeline.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    if reload_asked is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload_asked.set())
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def build(
    cfg: Config,
    config_path: Path | None,
    *,
    publish: bool,
    hub: PublishHub | None = None,
    processor: SharedProcessor | None = None,
) -> Pipeline:
    """`build_pipeline`, with refusals that only the stream's layout reveals (a cutoff
    above Nyquist) attributed to the config file they come from (and, in a daemon of
    several streams, to the stream's table)."""
    try:
        return build_pipeline(cfg, publish=publish, hub=hub, processor=processor)
    except ConfigError as exc:
        if exc.path is None:
            exc.path = config_path or Path("<default config>")
        if hub is not None and exc.key is not None and not exc.key.startswith("publish"):
            exc.key = f"streams.{cfg.stream}.{exc.key}"
        raise


def _failure(pipeline: Pipeline) -> BaseException | None:
    """What stopped ``pipeline``, as the command should raise it (None: it ended well)."""
    error = pipeline.error
    if isinstance(error, StreamerError) and not isinstance(error, InputFileError):
        # Refused at start-up is the user's to fix (exit 2); failing mid-stream (a device
        # that broke, a stage) is a failure while running (exit 1), whatever its class.
        failed = RuntimeError(f"stream {pipeline.cfg.stream!r} failed: {error}")
        failed.__cause__ = error
        return failed
    return error


def drive(
    pipelines: Sequence[Pipeline], *, progress: bool, reload: Callable[[], None] | None = None
) -> None:
    """Run ``pipelines`` to their end (or a signal), with a status line every interval
    and a ``status/`` heartbeat per stream; on SIGHUP, call ``reload`` (if given).

    A stream that fails is closed and logged while the others go on (a daemon of
    several streams keeps serving the rest). Raises what stopped the first that
    failed, once all have ended and their sinks were finalised. The progress bar
    (on a terminal, with ``progress``) follows the first stream.
    """
    first = pipelines[0]
    interval = min(p.cfg.pipeline.status_interval_s for p in pipelines)
    heartbeat = min(p.cfg.pipeline.heartbeat_s for p in pipelines)
    rate = first.source.layout.rate
    total = first.source.total_frames
    bar = tqdm(
        total=None if total is None else round(total / rate, 2),
        unit="s",
        desc=first.cfg.stream,
        disable=not (progress and sys.stderr.isatty()),
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}, {rate_fmt}]",
    )
    reload_asked = threading.Event() if reload is not None else None
    running = list(pipelines)
    failures: list[BaseException] = []
    with _handle_signals(pipelines, reload_asked), bar:
        for pipeline in pipelines:
            pipeline.start()
        now = time.monotonic()
        next_line, next_beat = now + interval, now + heartbeat
        tick = 0.1 if not bar.disable else min(interval, heartbeat, 0.5)
        while running:
            running[0].wait(tick)
            for pipeline in [p for p in running if p.done.is_set()]:
                running.remove(pipeline)
                pipeline.close()
                failure = _failure(pipeline)
                if failure is not None:
                    failures.append(failure)
                    if running:
                        name, left = pipeline.cfg.stream, len(running)
                        log.error("[%s] stopped: %s; %d other stream(s) go on", name, failure, left)
            if not bar.disable:
                bar.update(round(first.metrics.frames / rate, 2) - bar.n)
            if reload is not None and reload_asked is not None and reload_asked.is_set():
                reload_asked.clear()
                reload()
            now = time.monotonic()
            if now < min(next_line, next_beat):
                continue
            beat, line = now >= next_beat, now >= next_line
            if beat:
                next_beat = max(next_beat + heartbeat, now)
            if line:
                next_line = max(next_line + interval, now)
            for pipeline in running:
                snapshot = pipeline.snapshot()
                if beat and pipeline.publisher is not None:
                    pipeline.publisher.publish_status(snapshot)
                if line and bar.disable:
                    name = pipeline.cfg.stream
                    log.info("[%s] %s", name, status_line(snapshot), extra={"status": snapshot})
        if not bar.disable:
            bar.update(round(first.metrics.frames / rate, 2) - bar.n)
    if failures:
        raise failures[0]


def summary_lines(pipeline: Pipeline, wall_s: float) -> list[str]:
    """A human summary of a finished run."""
    snap = pipeline.snapshot()
    layout = pipeline.source.layout
    block = pipeline.cfg.pipeline.block
    period_ms = block / layout.rate * 1e3
    signal_s = snap["signal_s"]
    speed = f"{signal_s / wall_s:.1f}x real time" if wall_s > 0 else "-"
    proc = snap["processing_ms"]
    out = pipeline.out_layout
    resampled = f", out at {out.rate} Hz" if out.rate != layout.rate else ""
    lines = [
        f"{signal_s:.2f} s of audio ({layout.rate} Hz, {layout.channels} ch{resampled}) in "
        f"{snap['blocks']} blocks of {block} in {wall_s:.2f} s ({speed}, RTF {snap['rtf']})",
        f"processing per block: p50 {proc['p50']} ms  p99 {proc['p99']} ms  max {proc['max']} ms  "
        f"(period {period_ms:.2f} ms, {snap['deadline_misses']} deadline misses)",
    ]
    for name, stage in snap["stages_ms"].items():
        lines.append(
            f"  {name}: p50 {stage['p50']} ms  p99 {stage['p99']} ms  max {stage['max']} ms"
        )
    # Each stage's latency is in samples at its own input rate, said where not the source's.
    terms = [f" + {s.name} {s.latency}" for s in pipeline.stages]
    for i, into in enumerate(chain_layouts(pipeline.stages, layout)[:-1]):
        if into.rate != layout.rate:
            terms[i] += f" at {into.rate} Hz"
    lines.append(
        f"algorithmic latency: {pipeline.algorithmic_latency} samples at {layout.rate} Hz "
        f"({pipeline.algorithmic_latency_s * 1e3:.2f} ms: block {block}" + "".join(terms) + ")"
    )
    lines.append(
        f"dropped blocks: {snap['dropped_blocks']}  sink drops: {snap['sink_drops'] or 0}  "
        f"non-finite samples zeroed: {snap['nonfinite_samples']}"
    )
    return lines
