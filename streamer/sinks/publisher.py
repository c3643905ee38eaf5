"""Publishes streams' audio, per-block metrics and status over one ZeroMQ PUB socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import zmq

from streamer.block import Block
from streamer.config import PublishConfig
from streamer.errors import ConfigError
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.security import secure_server
from streamer.sinks.base import SinkWorker
from streamer.wire import encode, topic_for

__all__ = ["PublishHub", "Publisher"]

_BlockItem = tuple[Block, BlockTiming]
_StatusItem = dict[str, Any]
_HubItem = tuple["Publisher", _BlockItem | _StatusItem]


class PublishHub:
    """The PUB socket and the thread that owns it (sockets are not thread-safe),
    shared by the streams of a daemon.

    Each stream's `Publisher` hands its items over through one bounded queue;
    this thread encodes them (DESIGN.md §5), stamps ``published_ns`` and sends.
    A full queue drops the item and counts it in its stream's metrics. The
    socket closes when the last publisher attached to it does.

    Raises
    ------
    ConfigError
        The endpoint cannot be bound (``publish.endpoint``), or the CURVE keys
        cannot be read.
    """

    def __init__(self, cfg: PublishConfig, context: zmq.Context[Any] | None = None):
        self.cfg = cfg
        self._ctx = context or zmq.Context.instance()
        self._socket: zmq.Socket[Any] = self._ctx.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        self._auth = None
        if cfg.curve_secret_key is not None and cfg.curve_clients is not None:
            try:
                self._auth = secure_server(
                    self._socket, cfg.curve_secret_key, cfg.curve_clients, key="publish"
                )
            except ConfigError:
                self._socket.close(linger=0)
                raise
        try:
            self._socket.bind(cfg.endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            raise ConfigError(
                f"cannot bind {cfg.endpoint}: {exc.strerror}", key="publish.endpoint"
            ) from exc
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._worker: SinkWorker[_HubItem] = SinkWorker(
            "publish",
            lambda item: item[0]._send(item[1]),
            capacity=cfg.queue_messages,
            lossless=False,
            on_drop=lambda item: item[0].metrics.record_sink_drop("publish"),
        )
        self._attached = 0
        self._lock = threading.Lock()

    def attach(self) -> None:
        with self._lock:
            self._attached += 1

    def submit(self, publisher: Publisher, item: _BlockItem | _StatusItem) -> None:
        self._worker.submit((publisher, item))

    def send(self, frames: list[Any]) -> None:
        """Send one message (on the hub's thread only), never blocking."""
        self._socket.send_multipart(frames, flags=zmq.NOBLOCK)

    def detach(self) -> None:
        """One publisher is done; the last one closes the socket after what is queued."""
        with self._lock:
            self._attached -= 1
            if self._attached > 0:
                return
        try:
            self._worker.close()
        finally:
            self._socket.close()
            if self._auth is not None:
                self._auth.stop()


class Publisher:
    """One stream's messages on a `PublishHub`: its topics, their ``seq`` counters
    and its metrics. Publishing never blocks processing.

    Topics: ``audio/STREAM`` (the processed block), ``metrics/STREAM`` (its
    timings and end-to-end latency to publication), ``status/STREAM`` (a
    periodic summary with its own ``seq``), and ``anomaly/STREAM`` and
    ``spectrum/STREAM`` for the block's annotations (each with its own ``seq``).
    The source's ``metadata`` (a file's channel names, units), when it has any,
    goes out as ``meta`` in every ``audio`` and ``status`` header. The PUB socket
    itself drops for a subscriber that is too slow (past ``sndhwm``), which that
    subscriber sees as a gap in ``seq``.

    The publisher attaches to ``hub`` and detaches on `close`: a hub made for one
    stream closes its socket with it.
    """

    name = "publish"

    def __init__(
        self,
        hub: PublishHub,
        stream: str,
        metrics: StreamMetrics,
        *,
        meta: Mapping[str, Any] | None = None,
    ):
        self._hub = hub
        hub.attach()
        self._cfg = self._hub.cfg
        self._stream = stream
        self.metrics = metrics
        self._meta = {"meta": dict(meta)} if meta else {}
        kinds = ("audio", "metrics", "status", "anomaly", "spectrum")
        self._topics = {kind: topic_for(kind, stream) for kind in kinds}
        self._status_seq = 0
        self._annotation_seq = {"anomaly": 0, "spectrum": 0}
        self.endpoint: str = self._hub.endpoint
        self._closed = False

    def consume(self, block: Block, timing: BlockTiming) -> None:
        self._hub.submit(self, (block, timing))

    def publish_status(self, snapshot: dict[str, Any]) -> None:
        """Queue a ``status/`` message (called from the main thread)."""
        self._hub.submit(self, snapshot)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub.detach()

    def _send(self, item: _BlockItem | _StatusItem) -> None:
        if isinstance(item, dict):
            self._send_status(item)
        else:
            self._send_block(*item)

    def _common(self, block: Block) -> dict[str, Any]:
        return {
            "stream": self._stream,
            "seq": block.seq,
            "t0": block.t0,
            "rate": block.rate,
            "captured_ns": block.captured_ns,
        }

    def _send_block(self, block: Block, timing: BlockTiming) -> None:
        common = self._common(block)
        published_ns = time.monotonic_ns()
        if self._cfg.audio:
            header = {**common, "published_ns": published_ns, **self._meta}
            frames = encode(self._topics["audio"], header, block.samples)
            self._hub.send(frames)
        end_to_end_ns = published_ns - block.captured_ns
        self.metrics.record_published(end_to_end_ns)
        if self._cfg.metrics:
            header = {
                **common,
                "published_ns": time.monotonic_ns(),
                "frames": block.frames,
                "period_ns": timing.period_ns,
                "queue_ns": timing.queue_ns,
                "processing_ns": timing.processing_ns,
                "stages_ns": dict(zip(timing.stage_names, timing.stage_ns, strict=True)),
                "end_to_end_ns": end_to_end_ns,
                "deadline_missed": timing.missed,
                "nonfinite": timing.nonfinite,
            }
            self._hub.send(encode(self._topics["metrics"], header))
        for annotation in block.annotations:
            # Each of these topics has its own seq, so a subscriber sees its own losses.
            seq = self._annotation_seq[annotation.kind]
            self._annotation_seq[annotation.kind] = seq + 1
            header = {
                **common, **annotation.fields, "seq": seq, "published_ns": time.monotonic_ns()
            }  # fmt: skip
            frames = encode(self._topics[annotation.kind], header, annotation.array)
            self._hub.send(frames)

    def _send_status(self, snapshot: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        header = {
            "stream": self._stream,
            "seq": self._status_seq,
            "t0": snapshot["frames"],
            "rate": self.metrics.rate,
            "captured_ns": now,
            "published_ns": now,
            **snapshot,
            **self._meta,
        }
        self._status_seq += 1
        self._hub.send(encode(self._topics["status"], header))
