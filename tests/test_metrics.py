"""Latency histograms and per-stream accounting."""

from __future__ import annotations

import numpy as np

from streamer.metrics import BlockTiming, LatencyHistogram, StreamMetrics, status_line


def test_histogram_percentiles_within_one_percent() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=12, sigma=1.0, size=20_000).astype(np.int64)
    hist = LatencyHistogram()
    for v in values:
        hist.record(int(v))
    for q in (50, 90, 99):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(hist.percentile(q) - exact) <= 0.011 * exact
    assert hist.max_ns == values.max()
    assert hist.percentile(100) == values.max()


def test_empty_histogram_summary_is_null() -> None:
    assert LatencyHistogram().summary_ms() == {"p50": None, "p99": None, "max": None}


def test_tiny_and_huge_values_are_kept() -> None:
    hist = LatencyHistogram()
    hist.record(0)
    hist.record(10**15)
    assert hist.count == 2 and hist.max_ns == 10**15


def test_stream_metrics_snapshot() -> None:
    metrics = StreamMetrics("main", 48000, ["fir"], 256)
    period = 256 * 10**9 // 48000
    metrics.record_block(256, BlockTiming(1000, period // 2, (period // 3,), period, 0))
    metrics.record_block(256, BlockTiming(1000, period * 2, (period,), period, 3))
    metrics.record_published(2_000_000)
    metrics.record_drop()
    metrics.record_sink_drop("publish")
    snap = metrics.snapshot(queue_depth=4)
    assert snap["blocks"] == 2 and snap["frames"] == 512
    assert snap["deadline_misses"] == 1
    assert snap["nonfinite_samples"] == 3
    assert snap["dropped_blocks"] == 1 and snap["sink_drops"] == {"publish": 1}
    assert snap["queue_depth"] == 4
    assert abs(snap["rtf"] - 1.25) < 0.01
    assert set(snap["stages_ms"]) == {"fir"}
    assert abs(snap["end_to_end_ms"]["p50"] - 2.0) < 0.03
    line = status_line(snap)
    assert "misses 1" in line and "drops 1+1" in line


def test_recent_processing_follows_the_last_blocks_only() -> None:
    """A slow start-up burst dominates the whole-run p99 for ever; the recent window
    forgets it after RECENT_BLOCKS blocks."""
    from streamer.metrics import RECENT_BLOCKS

    metrics = StreamMetrics("main", 48000, [], 256)
    assert metrics.snapshot()["recent_processing_ms"] == {"p50": None, "p99": None, "max": None}
    period = 256 * 10**9 // 48000
    for ns in [50_000_000] * 100 + [100_000] * RECENT_BLOCKS:  # 50 ms, then 0.1 ms
        metrics.record_block(256, BlockTiming(0, ns, (), period, 0))
    snap = metrics.snapshot()
    assert snap["processing_ms"]["max"] == 50.0 and snap["processing_ms"]["p99"] > 40
    assert snap["recent_processing_ms"] == {"p50": 0.1, "p99": 0.1, "max": 0.1}
    metrics.record_block(256, BlockTiming(0, 2_000_000, (), period, 0))
    assert metrics.snapshot()["recent_processing_ms"]["max"] == 2.0
    assert "last 1000 p99 0.10" in status_line(snap)
