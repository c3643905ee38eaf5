"""Serves the pipelines' counters and latency histograms to Prometheus, read at scrape time.

Nothing is recorded twice: a custom collector converts the pipeline's own
log-binned histograms (`streamer.metrics.LatencyHistogram`) into Prometheus
histograms when scraped, so the hot path pays nothing for the endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from streamer.config import PrometheusConfig
from streamer.errors import ConfigError
from streamer.metrics import LatencyHistogram
from streamer.pipeline import Pipeline

__all__ = ["PipelineCollector", "serve"]

# Bucket upper bounds, seconds: 50 µs to 10 s, about three per decade.
BUCKETS_S = (
    5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip

_COUNTERS = (
    ("blocks", "Blocks processed."),
    ("frames", "Frames (samples per channel) processed."),
    ("dropped_blocks", "Blocks a live source lost because processing fell behind."),
    ("deadline_misses", "Blocks whose processing time exceeded their period."),
    ("nonfinite_samples", "NaN or infinite input samples replaced by zero."),
)
_SOURCE_COUNTERS = (
    ("input_overflows", "Input overflows reported by the audio device."),
    ("device_losses", "Times the input device was lost."),
    ("reopens", "Times the input device was reopened."),
    ("lost_frames", "Frames lost while the input device was away."),
)


def _add(family: HistogramMetricFamily, labels: list[str], hist: LatencyHistogram) -> None:
    """One labelled histogram, its buckets read off ``hist``'s cumulative counts."""
    counts = hist.cumulative_counts([b * 1e9 for b in BUCKETS_S])
    buckets = [(repr(b), float(c)) for b, c in zip(BUCKETS_S, counts, strict=True)]
    buckets.append(("+Inf", float(hist.count)))
    family.add_metric(labels, buckets, hist.total_ns / 1e9)


class PipelineCollector(Collector):
    """Everything the daemon's pipelines measure, in Prometheus form (``streamer_*``),
    one labelled series per stream."""

    def __init__(self, pipelines: Sequence[Pipeline]):
        self._pipelines = list(pipelines)

    def collect(self) -> Iterator[Any]:
        snaps = [(p, p.metrics.stream, p.snapshot()) for p in self._pipelines]
        for key, doc in _COUNTERS:
            family = CounterMetricFamily(f"streamer_{key}", doc, labels=["stream"])
            for _, stream, snap in snaps:
                family.add_metric([stream], snap[key])
            yield family
        sink_drops = CounterMetricFamily(
            "streamer_sink_drops", "Items a sink dropped because it fell behind.",
            labels=["stream", "sink"],
        )  # fmt: skip
        for _, stream, snap in snaps:
            for sink, count in snap["sink_drops"].items():
                sink_drops.add_metric([stream, sink], count)
        yield sink_drops
        for key, doc in _SOURCE_COUNTERS:
            family = CounterMetricFamily(f"streamer_source_{key}", doc, labels=["stream"])
            for _, stream, snap in snaps:
                if key in snap["source"]:
                    family.add_metric([stream], snap["source"][key])
            if family.samples:
                yield family
        queue = GaugeMetricFamily("streamer_queue_depth", "Blocks waiting.", labels=["stream"])
        algo = GaugeMetricFamily(
            "streamer_algorithmic_latency_seconds",
            "Block plus the stages' declared latencies.",
            labels=["stream"],
        )
        for pipeline, stream, snap in snaps:
            queue.add_metric([stream], snap["queue_depth"])
            algo.add_metric([stream], pipeline.algorithmic_latency_s)
        yield queue
        yield algo
        processing = HistogramMetricFamily(
            "streamer_processing_seconds", "Processing time per block.", labels=["stream"]
        )
        end_to_end = HistogramMetricFamily(
            "streamer_end_to_end_seconds", "From capture to publication, per block.",
            labels=["stream"],
        )  # fmt: skip
        for pipeline, stream, _ in snaps:
            _add(processing, [stream], pipeline.metrics.processing)
            _add(end_to_end, [stream], pipeline.metrics.end_to_end)
        yield processing
        yield end_to_end
        stages = HistogramMetricFamily(
            "streamer_stage_seconds", "Processing time per block in one stage.",
            labels=["stream", "stage"],
        )  # fmt: skip
        for pipeline, stream, _ in snaps:
            metrics = pipeline.metrics
            for name, hist in zip(metrics.stage_names, metrics.stages, strict=True):
                _add(stages, [stream, name], hist)
        yield stages


def serve(cfg: PrometheusConfig, pipelines: Sequence[Pipeline]) -> tuple[str, int]:
    """Start the HTTP endpoint on a daemon thread; return the address and port it bound."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipelines))
    try:
        server, _ = start_http_server(cfg.port, addr=cfg.address, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {cfg.address}:{cfg.port}: {exc.strerror}", key="prometheus.port"
        ) from exc
    host, port = server.server_address[:2]
    return str(host), int(port)
