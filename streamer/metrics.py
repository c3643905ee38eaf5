"""Latency and loss accounting for one stream: histograms, counters and the status line.

Vocabulary (DESIGN.md §6): *processing time* is the wall time of one block
through all stages; a *deadline miss* is a block whose processing time exceeded
its period (frames / rate); *end-to-end latency* runs from ``captured_ns`` to
the moment the block's audio message is handed to the socket; *RTF* is
processing time over signal duration.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["BlockTiming", "LatencyHistogram", "StreamMetrics"]

# Log-spaced bins from 100 ns to ~30 min at 1 % width: percentiles within 1 %
# over a run of any length, in constant memory (the idea of HdrHistogram).
_MIN_NS: Final = 100.0
_GROWTH: Final = 1.01
_BINS: Final = int(math.log(2e12 / _MIN_NS) / math.log(_GROWTH)) + 2
_LOG_GROWTH: Final = math.log(_GROWTH)
RECENT_BLOCKS: Final = 1000
"""Blocks in the ``recent_processing_ms`` window: a daemon's last few seconds, which the
whole-run figures (dominated by their start-up after a while) hide."""


class LatencyHistogram:
    """Durations in nanoseconds, kept as a log-binned histogram plus exact max."""

    __slots__ = ("_counts", "count", "max_ns", "total_ns")

    def __init__(self) -> None:
        self._counts: npt.NDArray[np.int64] = np.zeros(_BINS, dtype=np.int64)
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        idx = 0 if ns <= _MIN_NS else min(int(math.log(ns / _MIN_NS) / _LOG_GROWTH) + 1, _BINS - 1)
        self._counts[idx] += 1
        self.count += 1
        self.total_ns += ns
        self.max_ns = max(self.max_ns, ns)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in ns: the upper edge of its bin, capped at max."""
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.count))
        idx = int(np.searchsorted(np.cumsum(self._counts), rank))
        upper = _MIN_NS * _GROWTH**idx
        return float(min(upper, self.max_ns))

    def cumulative_counts(self, edges_ns: Sequence[float]) -> list[int]:
        """How many recorded values are at most each edge (to within a bin's 1 %)."""
        cumulative = np.cumsum(self._counts)
        out = []
        for edge in edges_ns:
            idx = 0 if edge <= _MIN_NS else int(math.log(edge / _MIN_NS) / _LOG_GROWTH)
            out.append(int(cumulative[min(idx, _BINS - 1)]) if idx >= 0 else 0)
        return out

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p99 and max in milliseconds (None when empty, as JSON has no NaN)."""
        if self.count == 0:
            return {"p50": None, "p99": None, "max": None}
        return {
            "p50": round(self.percentile(50) / 1e6, 4),
            "p99": round(self.percentile(99) / 1e6, 4),
            "max": round(self.max_ns / 1e6, 4),
        }


@dataclass(frozen=True, slots=True)
class BlockTiming:
    """What the processing thread measured for one block."""

    queue_ns: int
    """From ``captured_ns`` to the start of processing."""
    processing_ns: int
    stage_ns: tuple[int, ...]
    period_ns: int
    nonfinite: int
    """Non-finite samples replaced by zero in this block."""
    stage_names: tuple[str, ...] = ()
    """Names matching ``stage_ns`` (the chain may change on a config reload)."""

    @property
    def missed(self) -> bool:
        return self.processing_ns > self.period_ns


class StreamMetrics:
    """Counters and latency histograms of one stream, safe to update from several threads.

    The processing thread records blocks; sink threads record publication and
    drops; the main thread reads snapshots for the status line and ``status/``.
    """

    def __init__(self, stream: str, rate: int, stage_names: Sequence[str], block: int):
        self.stream = stream
        self.rate = rate
        self.block = block
        self.stage_names = tuple(stage_names)
        self.started_ns = time.monotonic_ns()
        self._lock = threading.Lock()
        self.blocks = 0
        self.frames = 0
        self.deadline_misses = 0
        self.nonfinite_samples = 0
        self.dropped_blocks = 0
        """Blocks a live source lost because the processing queue was full."""
        self.sink_drops: dict[str, int] = {}
        """Blocks or messages a sink dropped because it could not keep up, by sink."""
        self.sink_underruns: dict[str, int] = {}
        self.stage_errors: dict[str, int] = {}
        """Blocks dropped because a stage raised on them (``on_stage_error = "skip"``)."""
        """Times a device sink (the monitor) had nothing to play, by sink."""
        self.processing = LatencyHistogram()
        self.queue_wait = LatencyHistogram()
        self.stages = [LatencyHistogram() for _ in stage_names]
        self.end_to_end = LatencyHistogram()
        self.processing_time_ns = 0
        # The last RECENT_BLOCKS processing times, a ring written in place.
        self._recent: npt.NDArray[np.int64] = np.zeros(RECENT_BLOCKS, dtype=np.int64)

    def record_block(self, frames: int, timing: BlockTiming) -> None:
        with self._lock:
            self.blocks += 1
            self.frames += frames
            self.processing.record(timing.processing_ns)
            self._recent[(self.blocks - 1) % RECENT_BLOCKS] = timing.processing_ns
            self.processing_time_ns += timing.processing_ns
            self.queue_wait.record(max(timing.queue_ns, 0))
            if timing.stage_names and timing.stage_names != self.stage_names:
                # A reloaded chain: per-stage figures start afresh under the new names.
                self.stage_names = timing.stage_names
                self.stages = [LatencyHistogram() for _ in self.stage_names]
            for hist, ns in zip(self.stages, timing.stage_ns, strict=True):
                hist.record(ns)
            self.deadline_misses += timing.missed
            self.nonfinite_samples += timing.nonfinite

    def record_published(self, end_to_end_ns: int) -> None:
        with self._lock:
            self.end_to_end.record(max(end_to_end_ns, 0))

    def record_drop(self) -> None:
        with self._lock:
            self.dropped_blocks += 1

    def record_sink_drop(self, sink: str) -> None:
        with self._lock:
            self.sink_drops[sink] = self.sink_drops.get(sink, 0) + 1

    def record_stage_error(self, stage: str) -> int:
        """Count a block a stage failed on; returns that stage's count so far."""
        with self._lock:
            self.stage_errors[stage] = self.stage_errors.get(stage, 0) + 1
            return self.stage_errors[stage]

    def record_sink_underrun(self, sink: str) -> None:
        """Lock-free, for an audio callback: one writer per sink, whose key already exists."""
        self.sink_underruns[sink] += 1

    def snapshot(self, queue_depth: int = 0) -> dict[str, Any]:
        """Everything as plain JSON-ready values (the ``status/`` payload)."""
        with self._lock:
            signal_s = self.frames / self.rate
            return {
                "uptime_s": round((time.monotonic_ns() - self.started_ns) / 1e9, 3),
                "blocks": self.blocks,
                "frames": self.frames,
                "signal_s": round(signal_s, 3),
                "block": self.block,
                "queue_depth": queue_depth,
                "dropped_blocks": self.dropped_blocks,
                "sink_drops": dict(self.sink_drops),
                "sink_underruns": dict(self.sink_underruns),
                "stage_errors": dict(self.stage_errors),
                "deadline_misses": self.deadline_misses,
                "nonfinite_samples": self.nonfinite_samples,
                "rtf": round(self.processing_time_ns / 1e9 / signal_s, 6) if signal_s else None,
                "processing_ms": self.processing.summary_ms(),
                "recent_processing_ms": self._recent_summary_ms(),
                "stages_ms": {
                    name: hist.summary_ms()
                    for name, hist in zip(self.stage_names, self.stages, strict=True)
                },
                "queue_ms": self.queue_wait.summary_ms(),
                "end_to_end_ms": self.end_to_end.summary_ms(),
            }


    def _recent_summary_ms(self) -> dict[str, float | None]:
        """p50, p99 and max in ms of the last `RECENT_BLOCKS` blocks (exact; lock held)."""
        recent = self._recent[: min(self.blocks, RECENT_BLOCKS)]
        if recent.size == 0:
            return {"p50": None, "p99": None, "max": None}
        p50, p99 = np.percentile(recent, [50, 99])
        return {"p50": round(float(p50) / 1e6, 4), "p99": round(float(p99) / 1e6, 4),
                "max": round(float(recent.max()) / 1e6, 4)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def status_line(snap: dict[str, Any]) -> str:
    """One human line from a snapshot, for the terminal and logs."""
    proc, e2e = snap["processing_ms"], snap["end_to_end_ms"]
    recent = snap.get("recent_processing_ms") or {}
    sink_drops = sum(snap["sink_drops"].values())
    source = snap.get("source") or {}
    device = f"  input {source['state']}" if "state" in source else ""
    for key in ("input_overflows", "device_losses", "refused", "sender_lost_blocks"):
        if key in source:
            value = source[key]
            device += f" {key} {sum(value.values()) if isinstance(value, dict) else value}"
    return (
        f"{snap['uptime_s']:8.1f}s  blocks {snap['blocks']}  "
        f"proc p50/p99/max {_ms(proc['p50'])}/{_ms(proc['p99'])}/{_ms(proc['max'])} ms "
        f"(last {RECENT_BLOCKS} p99 {_ms(recent.get('p99'))})  "
        f"e2e p50/p99 {_ms(e2e['p50'])}/{_ms(e2e['p99'])} ms  "
        f"misses {snap['deadline_misses']}  drops {snap['dropped_blocks']}+{sink_drops}  "
        f"nonfinite {snap['nonfinite_samples']}  queue {snap['queue_depth']}{device}"
    )
