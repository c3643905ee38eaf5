"""Writes a stream's anomaly events to a file, one JSON object per line (``replay --events``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamer.block import Block
from streamer.errors import StreamerError
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.sinks.base import SinkWorker

__all__ = ["EventWriter"]


class EventWriter:
    """A sink that appends every ``anomaly`` annotation as a JSON line, flushed per block.

    Each line holds the event's fields plus ``stream``, ``seq`` (of the block it
    was found in) and ``t0``: the same fields as on the ``anomaly/`` topic but
    ``published_ns``.
    """

    name = "events"

    def __init__(self, path: Path, stream: str, metrics: StreamMetrics, *, lossless: bool):
        self.path = path
        self._stream = stream
        try:
            self._file = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise StreamerError(f"{path}: cannot write: {exc.strerror}") from exc
        self._worker: SinkWorker[list[dict[str, Any]]] = SinkWorker(
            "events", self._write, capacity=1024, lossless=lossless, metrics=metrics
        )

    def consume(self, block: Block, timing: BlockTiming) -> None:
        events = [
            {"stream": self._stream, "seq": block.seq, "t0": block.t0, "rate": block.rate,
             "captured_ns": block.captured_ns, **a.fields}
            for a in block.annotations
            if a.kind == "anomaly"
        ]  # fmt: skip
        if events:
            self._worker.submit(events)

    def _write(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self._file.write(json.dumps(event, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        try:
            self._worker.close()
        finally:
            self._file.close()
