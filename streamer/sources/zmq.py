"""The zmq source: frames from another program (or another streamer) in the wire format.

Every message is checked before it becomes a block: the wire format itself
(version, topic, header, dtype allow-list, payload size), that it is audio, and
that its channels and rate are the ones configured. A refused message is
counted by reason and skipped; the source never stops for one. Gaps in the
sender's ``seq`` are counted as lost blocks, and ``t0`` follows the sender's
``t0``, so a hole upstream stays a hole here. One message becomes one block,
whatever its length: stages take any block size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer.block import Block, StreamLayout
from streamer.config import ZmqSourceConfig
from streamer.errors import ConfigError, WireFormatError
from streamer.security import secure_client
from streamer.sources.base import NO_METADATA
from streamer.wire import decode

__all__ = ["ZmqSource"]

log = logging.getLogger("streamer")

_POLL_MS = 100


class ZmqSource:
    """Blocks from a SUB or PULL socket.

    Parameters
    ----------
    cfg : ZmqSourceConfig
        Endpoint, socket type, connect or bind, topic, the expected layout, the
        size limit and whether the sender shares this host's clock.
    stream : str
        Name of this stream (the sender's stream name may differ).

    Raises
    ------
    ConfigError
        The endpoint cannot be bound or connected.
    """

    live = True
    total_frames: int | None = None
    metadata = NO_METADATA

    def __init__(self, cfg: ZmqSourceConfig, stream: str):
        self._cfg = cfg
        self._stream_name = stream
        self.layout = StreamLayout(cfg.channels, cfg.rate)
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(
            zmq.SUB if cfg.socket == "sub" else zmq.PULL
        )
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        if cfg.socket == "sub":
            self._socket.setsockopt_string(zmq.SUBSCRIBE, cfg.topic)
        if cfg.curve_server_key is not None or cfg.curve_secret_key is not None:
            if cfg.curve_server_key is None or cfg.curve_secret_key is None:
                self._socket.close()
                raise ConfigError(
                    "CURVE needs both curve_server_key and curve_secret_key", key="source"
                )
            secure_client(self._socket, cfg.curve_server_key, cfg.curve_secret_key, key="source")
        try:
            if cfg.bind:
                self._socket.bind(cfg.endpoint)
            else:
                self._socket.connect(cfg.endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            verb = "bind" if cfg.bind else "connect to"
            raise ConfigError(
                f"cannot {verb} {cfg.endpoint}: {exc.strerror}", key="source.endpoint"
            ) from exc
        self.received = 0
        self.refused: dict[str, int] = {}
        self.sender_gaps = 0
        self.sender_lost_blocks = 0
        self.sender_restarts = 0
        self.disconnects = 0
        self._monitor: zmq.Socket[bytes] = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._last_sender_seq: int | None = None

    def _refuse(self, reason: str, detail: str) -> None:
        count = self.refused.get(reason, 0)
        self.refused[reason] = count + 1
        if count == 0:  # the first of each kind is logged; all are counted
            log.warning("zmq source refused a message (%s): %s", reason, detail)

    def _check(self, frames: list[bytes]) -> tuple[Any, np.ndarray] | None:
        """The decoded message and its array when acceptable, else None (counted)."""
        try:
            message = decode(frames, max_payload_bytes=self._cfg.max_message_bytes)
        except WireFormatError as exc:
            self._refuse("malformed", str(exc))
            return None
        if message.kind != "audio" or message.array is None:
            self._refuse("not_audio", f"topic {message.topic!r}")
            return None
        array = message.array
        if array.ndim != 2 or array.shape[0] != self._cfg.channels:
            self._refuse(
                "channels", f"shape {list(array.shape)}, expected [{self._cfg.channels}, frames]"
            )
            return None
        if message.header["rate"] != self._cfg.rate:
            self._refuse("rate", f"{message.header['rate']} Hz, expected {self._cfg.rate} Hz")
            return None
        for key in ("seq", "t0", "captured_ns"):
            value = message.header[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                self._refuse("header", f"{key} = {value!r} is not a non-negative integer")
                return None
        return message, array

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        """Yield one block per accepted message until ``stop`` is set.

        ``block_size`` is not used: blocks are the sender's messages.
        """
        seq = next_t0 = 0
        offset: int | None = None  # our t0 = the sender's t0 + offset
        last_sender_t0 = -1
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        relink = False
        while not stop.is_set():
            ready = dict(poller.poll(_POLL_MS))
            if self._monitor in ready:
                recv_monitor_message(self._monitor)
                self.disconnects += 1
                relink = True
            if self._socket not in ready:
                if relink:
                    self._relink()
                    relink = False
                continue
            accepted = self._check(self._socket.recv_multipart())
            if accepted is None:
                continue
            message, array = accepted
            header = message.header
            if self._last_sender_seq is not None and header["seq"] > self._last_sender_seq + 1:
                lost = header["seq"] - self._last_sender_seq - 1
                self.sender_gaps += 1
                self.sender_lost_blocks += max(lost, 0)
            self._last_sender_seq = header["seq"]
            if offset is None or header["t0"] <= last_sender_t0:
                if offset is not None:
                    self.sender_restarts += 1
                    log.warning("zmq source: the sender started again (t0 went back)")
                offset = next_t0 - header["t0"]
            last_sender_t0 = header["t0"]
            captured_ns = header["captured_ns"] if self._cfg.local_clock else time.monotonic_ns()
            # COPY: the payload view lives in the received frame; the block owns its samples.
            samples = np.array(array, dtype=np.float32, order="C")
            self.received += 1
            t0 = header["t0"] + offset
            yield Block(samples, self._stream_name, seq, t0, self._cfg.rate, captured_ns)
            seq += 1
            next_t0 = t0 + samples.shape[1]

    def _relink(self) -> None:
        """The link dropped: libzmq cuts a peer that sent more than the size limit and does
        not reconnect by itself. A connecting socket connects again; a bound one waits.

        Called only once what the peer had sent is read: a disconnect() takes effect
        inside a later recv, and one that lands between the frames of a multipart
        message aborts the process (libzmq's fq.cpp ``!_more`` assertion).
        """
        log.warning("zmq source: %s dropped the link; reconnecting", self._cfg.endpoint)
        if not self._cfg.bind:
            self._socket.disconnect(self._cfg.endpoint)
            self._socket.connect(self._cfg.endpoint)

    def health(self) -> dict[str, Any]:
        return {
            "state": "receiving" if self.received else "waiting",
            "received": self.received,
            "refused": dict(self.refused),
            "sender_gaps": self.sender_gaps,
            "sender_lost_blocks": self.sender_lost_blocks,
            "sender_restarts": self.sender_restarts,
            "disconnects": self.disconnects,
        }

    def close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close()
        self._socket.close()
