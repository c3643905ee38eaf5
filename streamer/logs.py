"""Logging set-up: readable lines on a terminal, JSON lines for a daemon's log collector.

Records are written by a thread of their own through a bounded queue: a log
reader that stalls (a full pipe) can never hold up the daemon's heartbeat or
processing. When the queue is full, records are dropped and counted, and the
count is written once the writer can write again.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonFormatter", "NonBlockingHandler", "configure_logging"]

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class NonBlockingHandler(logging.Handler):
    """Formats on the caller's thread, writes on its own; drops (and counts) when behind."""

    def __init__(self, target: logging.Handler, capacity: int = 10_000):
        super().__init__()
        self._target = target
        self._queue: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.flush_and_stop)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg, record.args = record.getMessage(), None  # format now: args may change
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        reported = 0
        while (record := self._queue.get()) is not None:
            if self.dropped > reported:
                note = f"{self.dropped - reported} log records dropped: the log reader was slow"
                warning = {"msg": note, "levelname": "WARNING", "levelno": logging.WARNING}
                self._target.handle(logging.makeLogRecord(warning))
                reported = self.dropped
            self._target.handle(record)

    def flush_and_stop(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout_s``: the reader may be gone)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)


def configure_logging(stream: TextIO | None = None, *, json_lines: bool | None = None) -> None:
    """Log to ``stream`` (stderr): JSON lines unless it is a terminal, or as ``json_lines`` says."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    target = logging.StreamHandler(stream)
    target.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s streamer %(levelname)s %(message)s")
    )
    root = logging.getLogger("streamer")
    for old in root.handlers:
        if isinstance(old, NonBlockingHandler):
            old.flush_and_stop()
    root.handlers[:] = [NonBlockingHandler(target)]
    root.setLevel(logging.INFO)
    root.propagate = False
