"""A subscriber that keeps every decoded message, on a thread of its own, for daemon tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from streamer.wire import Message, decode


class Collector:
    """Subscribes to everything and keeps decoded messages, on a thread of its own."""

    def __init__(self, endpoint: str):
        self.messages: list[Message] = []
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt_string(zmq.SUBSCRIBE, "")
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(100):
                self.messages.append(decode(self._sock.recv_multipart()))

    def of(self, kind: str) -> list[Message]:
        return [m for m in list(self.messages) if m.kind == kind]

    def wait_for(self, what: str, test: Callable[[], bool], timeout_s: float = 20) -> None:
        """Poll ``test`` until it holds (no fixed sleeps), failing after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not test():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
