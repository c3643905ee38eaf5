"""The zmq source: exact blocks from the wire, refusals counted, sender gaps and restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from streamer.block import Block
from streamer.config import ZmqSourceConfig
from streamer.errors import ConfigError
from streamer.sources.zmq import ZmqSource
from streamer.wire import encode

from ..conftest import free_tcp_endpoint


class Feed:
    """A PUB socket the test sends through, and the source's blocks read on a thread."""

    def __init__(self, **cfg: object):
        self.endpoint = free_tcp_endpoint()
        self.pub = zmq.Context.instance().socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(self.endpoint)
        config = ZmqSourceConfig.model_validate({"endpoint": self.endpoint, **cfg})
        self.source = ZmqSource(config, "in")
        self.blocks: list[Block] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for block in self.source.blocks(256, self.stop):
            self.blocks.append(block)

    def send(self, seq: int, t0: int, samples: np.ndarray, **header: object) -> None:
        fields = {"stream": "up", "seq": seq, "t0": t0, "rate": 48000, "captured_ns": 123,
                  "published_ns": 456, **header}  # fmt: skip
        self.pub.send_multipart(encode("audio/up", fields, samples))

    def wait_joined(self) -> None:
        """Send probes until one arrives (PUB/SUB joins late). They carry a rate the source
        refuses, so they change nothing but the refusal count, which is then cleared."""
        deadline = time.monotonic() + 10
        while not self.source.refused:
            assert time.monotonic() < deadline, "subscriber never joined"
            self.send(0, 0, np.zeros((1, 1), np.float32), rate=1)
            time.sleep(0.02)
        time.sleep(0.05)
        self.source.refused.clear()

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.blocks) < n:
            assert time.monotonic() < deadline, f"got {len(self.blocks)} of {n} blocks"
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=5)
        self.source.close()
        self.pub.close()


@pytest.fixture
def feed() -> Iterator[Feed]:
    f = Feed()
    f.wait_joined()
    yield f
    f.close()


def test_blocks_are_the_senders_samples(feed: Feed) -> None:
    rng = np.random.default_rng(0)
    sent = [rng.standard_normal((1, n)).astype(np.float32) for n in (256, 100, 1, 4096)]
    t0 = 1000
    for seq, samples in enumerate(sent, start=10):
        feed.send(seq, t0, samples)
        t0 += samples.shape[1]
    feed.wait_for(len(sent))
    for block, samples in zip(feed.blocks, sent, strict=True):
        np.testing.assert_array_equal(block.samples, samples)
        assert block.samples.flags.c_contiguous and block.samples.flags.writeable
        assert block.stream == "in" and block.rate == 48000 and block.captured_ns == 123
    assert [b.t0 - feed.blocks[0].t0 for b in feed.blocks] == [0, 256, 356, 357]
    seqs = [b.seq for b in feed.blocks]
    assert seqs == list(range(seqs[0], seqs[0] + 4))


def test_bad_messages_are_refused_counted_and_survived(feed: Feed) -> None:
    good = np.ones((1, 8), np.float32)
    feed.pub.send_multipart([b"audio/up", b"not json"])
    feed.pub.send_multipart([b"audio/up"])
    feed.send(1, 0, np.ones((2, 8), np.float32))  # two channels, one expected
    feed.send(2, 0, good, rate=44100)
    feed.send(3, 0, good, v=7)
    feed.send(4, -5, good)
    feed.pub.send_multipart(encode("status/up", {"stream": "up", "seq": 0, "t0": 0, "rate": 1,
                                                 "captured_ns": 0, "published_ns": 0}))  # fmt: skip
    feed.send(5, 0, good)
    feed.wait_for(1)
    np.testing.assert_array_equal(feed.blocks[0].samples, good)
    health = feed.source.health()
    assert health["refused"] == {"malformed": 3, "channels": 1, "rate": 1, "header": 1}
    assert health["received"] >= 1 and health["state"] == "receiving"


def test_sender_gaps_are_counted_and_t0_keeps_the_hole(feed: Feed) -> None:
    block = np.zeros((1, 100), np.float32)
    feed.send(0, 0, block)
    feed.send(1, 100, block)
    feed.send(4, 400, block)  # blocks 2 and 3 were lost upstream
    feed.wait_for(3)
    assert [b.t0 for b in feed.blocks][1:] == [100, 400]
    assert feed.source.health()["sender_gaps"] == 1
    assert feed.source.health()["sender_lost_blocks"] == 2


def test_a_restarted_sender_continues_the_stream(feed: Feed) -> None:
    block = np.zeros((1, 100), np.float32)
    feed.send(7, 700, block)
    feed.send(8, 800, block)
    feed.send(0, 0, block)  # the sender started again
    feed.wait_for(3)
    t0 = [b.t0 - feed.blocks[0].t0 for b in feed.blocks]
    assert t0 == [0, 100, 200]
    assert feed.source.health()["sender_restarts"] == 1


def test_pull_socket_binds_and_receives() -> None:
    endpoint = free_tcp_endpoint()
    source = ZmqSource(ZmqSourceConfig(endpoint=endpoint, socket="pull", bind=True), "in")
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    stop = threading.Event()
    try:
        samples = np.arange(16, dtype=np.float32).reshape(1, 16)
        header = {"stream": "up", "seq": 0, "t0": 0, "rate": 48000, "captured_ns": 1,
                  "published_ns": 1}  # fmt: skip
        push.send_multipart(encode("audio/up", header, samples))  # PUSH queues until connected
        block = next(source.blocks(256, stop))
        np.testing.assert_array_equal(block.samples, samples)
    finally:
        stop.set()
        push.close()
        source.close()


def test_an_endpoint_that_cannot_be_bound_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"source\.endpoint: cannot bind tcp://8\.8\.8\.8"):
        ZmqSource(ZmqSourceConfig(endpoint="tcp://8.8.8.8:1", bind=True), "in")


def test_an_oversized_message_is_refused_by_the_socket_and_the_source_goes_on() -> None:
    feed = Feed(max_message_bytes=4096)
    try:
        feed.wait_joined()
        feed.send(0, 0, np.zeros((1, 10_000), np.float32))  # 40 kB: over the limit
        deadline = time.monotonic() + 10
        while not feed.blocks:  # the SUB reconnects after libzmq drops the oversized peer
            assert time.monotonic() < deadline, "the source did not recover"
            feed.send(1, 10_000, np.ones((1, 8), np.float32))
            time.sleep(0.05)
        assert all(b.frames == 8 for b in feed.blocks)
        assert feed.source.health()["disconnects"] >= 1
    finally:
        feed.close()
