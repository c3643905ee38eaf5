"""The protocol every source follows, and the real-time pacer they share."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from streamer.block import Block, StreamLayout

__all__ = ["NO_METADATA", "Pacer", "Source"]

NO_METADATA: Final[Mapping[str, Any]] = MappingProxyType({})


class Source(Protocol):
    """Yields the blocks of one stream.

    A source opens what it reads in ``__init__`` so that a missing or corrupt
    input fails at start-up, before any thread runs.
    """

    layout: StreamLayout
    live: bool
    """True when the source cannot wait (a microphone, a paced synth): on
    overflow the pipeline drops and counts blocks. False when it is lossless:
    the pipeline makes it wait for room in the queue."""
    total_frames: int | None
    """Frames the source will yield, when known (for progress bars)."""
    metadata: Mapping[str, Any]
    """What the input says of itself (a file's channel names, units): JSON-ready, sent
    as ``meta`` in the stream's headers (docs/wire-format.md); empty when nothing."""

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        """Yield blocks of ``block_size`` frames (the last may be shorter) until
        the input ends or ``stop`` is set."""
        ...

    def close(self) -> None:
        """Release files and devices."""
        ...

    def health(self) -> dict[str, Any]:
        """The source's own state and loss counters (for status/); empty when it has none."""
        ...


class Pacer:
    """Holds a source back to real time: block k is due when its last sample
    would have been captured live.

    Waits on the stop event rather than sleeping, so a stop is immediate.
    """

    def __init__(self, rate: int, stop: threading.Event, *, realtime: bool):
        self._rate = rate
        self._stop = stop
        self._realtime = realtime
        self._start_ns = time.monotonic_ns()

    def wait_for(self, frames_done: int) -> int:
        """Wait until ``frames_done`` frames are due; return ``captured_ns``."""
        if self._realtime:
            due_ns = self._start_ns + frames_done * 1_000_000_000 // self._rate
            delay_s = (due_ns - time.monotonic_ns()) / 1e9
            if delay_s > 0:
                self._stop.wait(delay_s)
        return time.monotonic_ns()
