"""The sink protocol, and a worker thread with a bounded queue that every sink runs on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from streamer.block import Block
from streamer.metrics import BlockTiming, StreamMetrics

__all__ = ["Sink", "SinkWorker"]

Item = TypeVar("Item")
_END = object()


class Sink(Protocol):
    """Receives processed blocks on the processing thread and never blocks it
    (except a lossless sink fed by a lossless source, which may wait)."""

    name: str

    def consume(self, block: Block, timing: BlockTiming) -> None: ...

    def close(self) -> None:
        """Flush and finalise; raise the first error the sink met."""
        ...


class SinkWorker(Generic[Item]):
    """Runs ``handle(item)`` on a thread of its own, fed through a bounded queue.

    ``lossless=True`` makes ``submit`` wait for room (a file replay must keep
    every sample); otherwise a full queue drops the item and counts it in the
    stream's ``metrics`` (or calls ``on_drop(item)``, for a worker that several
    streams share). The first exception in ``handle`` stops the worker and is
    raised by the next ``submit`` or by ``close``, so a failing sink (a full
    disk) stops the pipeline with its error instead of failing silently.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[Item], None],
        *,
        capacity: int,
        lossless: bool,
        metrics: StreamMetrics | None = None,
        on_drop: Callable[[Item], None] | None = None,
    ):
        if on_drop is None:
            if metrics is None:
                raise ValueError("a SinkWorker counts its drops in metrics or through on_drop")
            counted = metrics
            on_drop = lambda _item: counted.record_sink_drop(name)  # noqa: E731
        self.name = name
        self._handle = handle
        self._lossless = lossless
        self._on_drop = on_drop
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        self._raise_if_failed()
        if self._lossless:
            while True:
                try:
                    self._queue.put(item, timeout=0.5)
                    return
                except queue.Full:
                    self._raise_if_failed()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._on_drop(item)

    def close(self) -> None:
        """Let the worker finish what is queued, then stop it."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None:
                continue  # failed: keep draining so that submit and close never hang
            try:
                self._handle(item)  # type: ignore[arg-type]  # not _END here
            except BaseException as exc:
                self._error = exc
