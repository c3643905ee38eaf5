"""Annotations a stage adds to a block reach the wire (own topic, own seq) and the events file."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamer.block import Annotation, Block, StreamLayout
from streamer.config import PublishConfig, parse_config
from streamer.metrics import StreamMetrics
from streamer.pipeline import Pipeline
from streamer.sinks.events import EventWriter
from streamer.sinks.publisher import Publisher, PublishHub

from ..conftest import free_tcp_endpoint
from ..helpers.collector import Collector

LAYOUT = StreamLayout(1, 1000)


class Ticks:
    live = False
    total_frames = 2000
    layout = LAYOUT

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        for seq in range(20):
            yield Block(
                np.zeros((1, 100), np.float32), "s", seq, seq * 100, 1000, time.monotonic_ns()
            )

    def health(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


class EveryFifth:
    """Annotates every fifth block with an event and every block with a tiny spectrum."""

    name = "every5"
    latency = 0

    def process(self, block: Block) -> Block:
        spectrum = Annotation("spectrum", {"bands_hz": [[0, 500]]}, np.ones((1, 1), np.float32))
        block = block.annotated(spectrum)
        if block.seq % 5 == 0:
            event = {"state": "onset", "event_id": block.seq // 5, "start_s": block.t0 / 1000}
            block = block.annotated(Annotation("anomaly", event))
        return block

    def reset(self) -> None:
        pass


def test_annotations_are_published_and_written(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    metrics = StreamMetrics("s", 1000, ["every5"], 100)
    publisher = Publisher(PublishHub(PublishConfig(endpoint=endpoint)), "s", metrics)
    events_path = tmp_path / "events.jsonl"
    writer = EventWriter(events_path, "s", metrics, lossless=True)
    collector = Collector(endpoint)
    # PUB/SUB joins late: publish status until the collector hears one.
    deadline = time.monotonic() + 10
    while not collector.of("status"):
        assert time.monotonic() < deadline
        publisher.publish_status(metrics.snapshot())
        time.sleep(0.02)
    cfg = parse_config({}, environ={})
    pipeline = Pipeline(cfg, Ticks(), [EveryFifth()], [writer, publisher], metrics, publisher)
    pipeline.start()
    assert pipeline.wait(10)
    pipeline.close()
    collector.wait_for("the last event", lambda: len(collector.of("anomaly")) == 4)
    collector.wait_for("the spectra", lambda: len(collector.of("spectrum")) == 20)
    collector.close()
    anomaly = [m.header for m in collector.of("anomaly")]
    assert [h["seq"] for h in anomaly] == [0, 1, 2, 3]  # the topic's own seq
    assert [h["t0"] for h in anomaly] == [0, 500, 1000, 1500]  # the block's t0
    assert [h["event_id"] for h in anomaly] == [0, 1, 2, 3]
    assert all(h["state"] == "onset" and "published_ns" in h for h in anomaly)
    spectra = collector.of("spectrum")
    assert spectra[3].array is not None and spectra[3].array.shape == (1, 1)
    lines = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [0, 5, 10, 15]
    assert lines[1] == {"stream": "s", "seq": 5, "t0": 500, "rate": 1000,
                        "captured_ns": lines[1]["captured_ns"], "state": "onset",
                        "event_id": 1, "start_s": 0.5}  # fmt: skip
