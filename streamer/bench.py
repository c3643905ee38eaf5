"""The latency/block-size sweep behind ``streamer bench``: measure each block size, then recommend.

For every block size B the sweep runs the configured pipeline twice:

1. **Processing** (as fast as possible, lossless): the configured source's
   signal, generated once and replayed from memory, goes through the real
   `Pipeline` and its stages; each block's processing time (total and per
   stage) is recorded after a warm-up. This gives p50/p99/max, the
   deadline-miss rate (processing > B / rate), the real-time factor, CPU time
   per second of signal and, with several streams at once, how many real-time
   streams the machine carries.
2. **End to end** (at real-time pace): the pipeline runs live and publishes on
   loopback ZeroMQ; a ``streamer subscribe`` process records, for every audio
   message, the time from the block's ``captured_ns`` to holding it.

The recommended block size is the smallest whose p99 processing time stays
under ``share`` of its period; the knee is where deadline misses begin.

The sweep repeats for each compute backend asked for (`BACKENDS`) that changes
something in the pipeline: ``torch`` moves the FIR stages to their torch kernels
on the CPU, ``cuda`` moves them and the learned denoiser to the GPU; conclusions
are drawn per backend.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.block import Block, StreamLayout
from streamer.config import Config, DenoiseConfig, FileSourceConfig, FirConfig, with_overrides
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.pipeline import Pipeline, build_pipeline
from streamer.sources import NO_METADATA, open_source
from streamer.stages import Stage, build_stages

__all__ = [
    "BACKENDS",
    "BenchPoint",
    "BenchReport",
    "SubscriberProbe",
    "knee",
    "machine_description",
    "measure_latency",
    "measure_processing",
    "recommend",
    "record_signal",
    "run_sweep",
]

BACKENDS = ("numpy", "torch", "cuda")
"""numpy: every stage on its numpy kernels (the learned denoiser, torch only, on the CPU);
torch: the FIR stages on torch's CPU kernels; cuda: the FIR stages and the learned
denoiser on the GPU."""

MISS_RATE_LIMIT = 0.01
"""A block size whose deadline-miss rate is at or above this does not keep up."""

StageFactory = Callable[[StreamLayout, int], list[Stage]]


@dataclass
class BenchPoint:
    """Everything measured at one block size (times in ms)."""

    block: int
    rate: int
    streams: int
    backend: str
    period_ms: float
    algorithmic_latency_samples: int
    algorithmic_latency_ms: float
    blocks_measured: int
    processing_ms: dict[str, float]
    stages_ms: dict[str, dict[str, float]]
    miss_rate: float
    rtf: float
    cpu_per_signal_s: float
    realtime_streams: float
    """Real-time streams this machine could carry at this block size, flat out."""
    end_to_end_ms: dict[str, float] | None = None
    end_to_end_count: int = 0
    live_dropped_blocks: int = 0
    live_deadline_misses: int = 0


@dataclass
class BenchReport:
    """The sweep's points and conclusions; ``recommended_block`` and ``knee_block`` are the
    first backend's, ``backends`` has them for each backend measured."""

    machine: dict[str, Any]
    config: dict[str, Any]
    share: float
    points: list[BenchPoint] = field(default_factory=list)
    recommended_block: int | None = None
    knee_block: int | None = None
    backends: dict[str, dict[str, int | None]] = field(default_factory=dict)
    skipped_backends: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """Strict JSON: NaN (nothing measured) becomes null."""
        return json.dumps(_nan_to_none(asdict(self)), indent=2, allow_nan=False)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


# ------------------------------------------------------------- measurement


class _TimingRecorder:
    """A sink that keeps every block's timing, for exact per-block percentiles."""

    name = "bench"

    def __init__(self, wanted: int) -> None:
        self.timings: list[BlockTiming] = []
        self.enough = threading.Event()
        self._wanted = wanted

    def consume(self, block: Block, timing: BlockTiming) -> None:
        self.timings.append(timing)
        if len(self.timings) >= self._wanted:
            self.enough.set()

    def close(self) -> None:
        pass


class _ReplaySource:
    """Replays a signal held in memory, looping, as fast as the pipeline takes it."""

    live = False
    total_frames: int | None = None
    metadata = NO_METADATA

    def __init__(self, signal: npt.NDArray[np.float32], rate: int, stream: str):
        self.layout = StreamLayout(signal.shape[0], rate)
        self._signal = signal
        self._stream = stream

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        total = self._signal.shape[1]
        t0 = seq = 0
        while not stop.is_set():
            start = t0 % total
            if start + block_size <= total:
                # COPY: each block owns its samples (the pipeline zeroes NaNs in place).
                samples = self._signal[:, start : start + block_size].copy()
            else:
                samples = np.take(
                    self._signal, np.arange(start, start + block_size) % total, axis=1
                )
            yield Block(samples, self._stream, seq, t0, self.layout.rate, time.monotonic_ns())
            seq += 1
            t0 += block_size

    def health(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def record_signal(cfg: Config, seconds: float) -> tuple[npt.NDArray[np.float32], int]:
    """``seconds`` of the configured source's signal (less if a file is shorter), and its rate."""
    source_updates: dict[str, Any] = {"realtime": False}
    if not isinstance(cfg.source, FileSourceConfig):
        source_updates["duration_s"] = seconds
    else:
        source_updates["loop"] = False
    source = open_source(with_overrides(cfg, {"source": source_updates}).source, cfg.stream)
    try:
        rate = source.layout.rate
        wanted = int(seconds * rate)
        parts, got = [], 0
        for block in source.blocks(min(wanted, 1 << 16), threading.Event()):
            parts.append(block.samples)
            got += block.frames
            if got >= wanted:
                break
    finally:
        source.close()
    return np.ascontiguousarray(np.concatenate(parts, axis=1)[:, :wanted]), rate


def _percentiles_ms(ns: npt.NDArray[np.int64]) -> dict[str, float]:
    if ns.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(ns, [50, 99])
    return {"p50": float(p50) / 1e6, "p99": float(p99) / 1e6, "max": float(ns.max()) / 1e6}


def measure_processing(
    cfg: Config,
    signal: npt.NDArray[np.float32],
    rate: int,
    block: int,
    *,
    streams: int = 1,
    warmup_blocks: int = 50,
    min_blocks: int = 1000,
    min_seconds: float = 0.5,
    max_seconds: float = 3.0,
    make_stages: StageFactory | None = None,
    backend: str = "numpy",
) -> BenchPoint:
    """Run ``streams`` copies of the pipeline flat out on ``signal`` and time every block.

    Stops once every stream has processed ``warmup_blocks + min_blocks`` blocks and
    ``min_seconds`` have passed, or at ``max_seconds`` with what it has.
    ``make_stages`` replaces the configured stages (tests inject a known delay);
    ``backend`` labels the point (`with_backend` makes the config).
    """
    cfg = with_overrides(cfg, {"pipeline": {"block": block}})
    layout = StreamLayout(signal.shape[0], rate)
    wanted = warmup_blocks + min_blocks
    runs: list[tuple[Pipeline, _TimingRecorder]] = []
    for i in range(streams):
        if make_stages is not None:
            stages = make_stages(layout, block)
        else:
            stages = build_stages(cfg.stages, layout, block=block)
        recorder = _TimingRecorder(wanted)
        metrics = StreamMetrics(f"bench{i}", rate, [s.name for s in stages], block)
        source = _ReplaySource(signal, rate, f"bench{i}")
        runs.append((Pipeline(cfg, source, stages, [recorder], metrics), recorder))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for pipeline, _ in runs:
        pipeline.start()
    for _, rec in runs:
        rec.enough.wait(max(0.0, max_seconds - (time.perf_counter() - wall0)))
    time.sleep(max(0.0, min_seconds - (time.perf_counter() - wall0)))
    for pipeline, _ in runs:
        pipeline.request_stop()
    for pipeline, _ in runs:
        pipeline.wait()
        pipeline.close()
        if pipeline.error is not None:
            raise pipeline.error
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0

    stage_names = [s.name for s in runs[0][0].stages]
    kept = [t for _, rec in runs for t in rec.timings[warmup_blocks:]] or [
        t for _, rec in runs for t in rec.timings
    ]
    total_ns = np.array([t.processing_ns for t in kept], dtype=np.int64)
    per_stage = np.array([t.stage_ns for t in kept], dtype=np.int64).reshape(len(kept), -1)
    periods = np.array([t.period_ns for t in kept], dtype=np.int64)
    # Source frames (the pipeline's metrics count those, whatever a resample makes of them).
    signal_s = sum(pipeline.metrics.frames for pipeline, _ in runs) / rate
    return BenchPoint(
        block=block,
        rate=rate,
        streams=streams,
        backend=backend,
        period_ms=block / rate * 1e3,
        algorithmic_latency_samples=runs[0][0].algorithmic_latency,
        algorithmic_latency_ms=runs[0][0].algorithmic_latency_s * 1e3,
        blocks_measured=len(kept),
        processing_ms=_percentiles_ms(total_ns),
        stages_ms={name: _percentiles_ms(per_stage[:, i]) for i, name in enumerate(stage_names)},
        miss_rate=float(np.mean(total_ns > periods)) if kept else float("nan"),
        rtf=float(total_ns.sum() / 1e9 / (len(kept) * block / rate)) if kept else float("nan"),
        cpu_per_signal_s=cpu_s / signal_s if signal_s else float("nan"),
        realtime_streams=signal_s / wall_s,
    )


class SubscriberProbe:
    """A ``streamer subscribe`` process that records end-to-end latency per topic.

    Runs in another process, as a real subscriber would; started once for the
    whole sweep and reconnected by ZeroMQ as each point's publisher binds.
    """

    def __init__(self, endpoint: str, cpus: set[int] | None = None):
        self.endpoint = endpoint
        self._latencies: dict[str, list[tuple[int, float]]] = {}
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "subscribe", "--endpoint", endpoint,
             "--topic", "audio/"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        if cpus:
            os.sched_setaffinity(self._proc.pid, cpus)
        self._reader = threading.Thread(target=self._read, name="probe", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            with self._lock:
                self._latencies.setdefault(msg["topic"], []).append(
                    (msg["header"]["seq"], msg["end_to_end_ms"])
                )

    def take(self, topic: str) -> list[tuple[int, float]]:
        """(seq, end-to-end ms) of every message received on ``topic`` so far."""
        with self._lock:
            return list(self._latencies.pop(topic, []))

    def close(self) -> None:
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)


def measure_latency(
    cfg: Config,
    block: int,
    probe: SubscriberProbe,
    *,
    streams: int = 1,
    duration_s: float = 1.5,
    warmup_s: float = 0.3,
) -> dict[str, Any]:
    """Run the pipeline live (real-time pace) and collect end-to-end latency from ``probe``.

    Stream 0 publishes to the probe; with ``streams`` > 1 the others run beside
    it unpublished, to load the machine as that many live streams would.
    """
    name = f"bench-b{block}"
    source: dict[str, Any] = {"realtime": True}
    if not isinstance(cfg.source, FileSourceConfig):
        source["duration_s"] = None
    else:
        source["loop"] = True
    base = with_overrides(
        cfg,
        {
            "stream": name,
            "pipeline": {"block": block},
            "source": source,
            "publish": {"endpoint": probe.endpoint, "metrics": False},
            "output": {"wav": None},
        },
    )
    pipelines = [build_pipeline(base, publish=True)]
    for i in range(1, streams):
        pipelines.append(build_pipeline(with_overrides(base, {"stream": f"{name}-{i}"}),
                                        publish=False))  # fmt: skip
    for pipeline in pipelines:
        pipeline.start()
    time.sleep(duration_s)
    for pipeline in pipelines:
        pipeline.request_stop()
    for pipeline in pipelines:
        pipeline.wait()
        pipeline.close()
        if pipeline.error is not None:
            raise pipeline.error
    samples = probe.take(f"audio/{name}")
    skip_seq = int(warmup_s * pipelines[0].source.layout.rate / block)
    e2e = np.array([ms for seq, ms in samples if seq >= skip_seq], dtype=np.float64)
    snaps = [p.snapshot() for p in pipelines]
    return {
        "end_to_end_ms": (
            {k: float(v) for k, v in zip(("p50", "p99"), np.percentile(e2e, [50, 99]), strict=True)}
            | {"max": float(e2e.max())}
            if e2e.size
            else None
        ),
        "end_to_end_count": int(e2e.size),
        "live_dropped_blocks": sum(s["dropped_blocks"] for s in snaps),
        "live_deadline_misses": sum(s["deadline_misses"] for s in snaps),
    }


def cuda_device() -> str | None:
    """The name of the GPU torch would use, or None (no torch, or no CUDA device)."""
    try:
        import torch
    except ImportError:
        return None
    return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


def with_backend(cfg: Config, backend: str) -> tuple[Config | None, str]:
    """``cfg`` with its stages moved to ``backend``, or None and why not.

    numpy is always measured. torch needs a FIR stage (nothing else has torch CPU
    kernels that numpy lacks); cuda needs a FIR stage or a learned denoiser, and a
    CUDA device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if backend == "cuda" and cuda_device() is None:
        return None, "torch sees no CUDA device"
    device = "cuda" if backend == "cuda" else "cpu"
    stages: list[Any] = []
    moved = False
    for stage in cfg.stages:
        if isinstance(stage, FirConfig):
            update: dict[str, Any] = (
                {"backend": "numpy", "device": "cpu"} if backend == "numpy"
                else {"backend": "torch", "device": device, "algorithm": "partitioned"}
            )  # fmt: skip
            stage = stage.model_copy(update=update)
            moved = True
        elif isinstance(stage, DenoiseConfig) and stage.method == "learned":
            stage = stage.model_copy(update={"device": device})
            moved = moved or backend == "cuda"
        stages.append(stage)
    if backend != "numpy" and not moved:
        return None, f"no stage of this pipeline runs on {backend}"
    return cfg.model_copy(update={"stages": stages}), ""


# ------------------------------------------------------------ conclusions


def recommend(points: Sequence[BenchPoint], share: float) -> int | None:
    """The smallest block size whose p99 processing time is at most ``share`` of its period."""
    fits = [p.block for p in points if p.processing_ms["p99"] <= share * p.period_ms]
    return min(fits) if fits else None


def knee(points: Sequence[BenchPoint]) -> int | None:
    """The smallest block size from which every larger one keeps its deadlines
    (miss rate under `MISS_RATE_LIMIT`): below it, deadline misses begin."""
    best = None
    for p in sorted(points, key=lambda p: p.block, reverse=True):
        if p.miss_rate >= MISS_RATE_LIMIT:
            break
        best = p.block
    return best


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "pyzmq": _version("pyzmq"),
        "torch": _version("torch"),
        "device": cuda_device() or "cpu",
        "streamer": _version("streamer"),
    }


def run_sweep(
    cfg: Config,
    blocks: Sequence[int],
    *,
    share: float = 0.5,
    streams: int = 1,
    latency: bool = True,
    find_knee: bool = True,
    backends: Sequence[str] = ("numpy",),
    signal_seconds: float = 10.0,
    latency_seconds: float = 1.5,
    probe_cpus: set[int] | None = None,
    on_point: Callable[[BenchPoint], None] | None = None,
    endpoint: str = "tcp://127.0.0.1:0",
) -> BenchReport:
    """Measure every block size in ``blocks`` on each backend (and, with ``find_knee``,
    halve below the smallest until deadlines are missed), then conclude per backend."""
    signal, rate = record_signal(cfg, signal_seconds)
    report = BenchReport(machine_description(), cfg.model_dump(mode="json"), share)
    probe = SubscriberProbe(_bound_endpoint(endpoint), probe_cpus) if latency else None
    try:
        for backend in backends:
            moved, why = with_backend(cfg, backend)
            if moved is None:
                report.skipped_backends[backend] = why
                continue
            points = _sweep_one(moved, backend, signal, rate, blocks, streams, probe,
                                latency_seconds, find_knee, on_point)  # fmt: skip
            report.points.extend(points)
            report.backends[backend] = {
                "recommended_block": recommend(points, share), "knee_block": knee(points)
            }
    finally:
        if probe is not None:
            probe.close()
    if report.backends:
        first = report.backends[next(iter(report.backends))]
        report.recommended_block = first["recommended_block"]
        report.knee_block = first["knee_block"]
    return report


def _sweep_one(
    cfg: Config,
    backend: str,
    signal: npt.NDArray[np.float32],
    rate: int,
    blocks: Sequence[int],
    streams: int,
    probe: SubscriberProbe | None,
    latency_seconds: float,
    find_knee: bool,
    on_point: Callable[[BenchPoint], None] | None,
) -> list[BenchPoint]:
    """One backend's sweep, sorted by block size."""
    points: list[BenchPoint] = []

    def add(point: BenchPoint) -> None:
        points.append(point)
        if on_point is not None:
            on_point(point)

    for block in sorted(set(blocks)):
        point = measure_processing(cfg, signal, rate, block, streams=streams, backend=backend)
        if probe is not None:
            # Live at real-time pace: long enough for ~30 blocks at large sizes.
            seconds = min(max(latency_seconds, 30 * block / rate), 6.0)
            live = measure_latency(cfg, block, probe, streams=streams, duration_s=seconds)
            for key, value in live.items():
                setattr(point, key, value)
        add(point)
    while find_knee and points:
        smallest = min(points, key=lambda p: p.block)
        if smallest.miss_rate >= MISS_RATE_LIMIT or smallest.block == 1:
            break
        add(measure_processing(cfg, signal, rate, smallest.block // 2, streams=streams,
                               backend=backend))  # fmt: skip
    points.sort(key=lambda p: p.block)
    return points


def _bound_endpoint(endpoint: str) -> str:
    """A concrete loopback endpoint: port 0 becomes a port that was free a moment ago."""
    if not endpoint.endswith(":0"):
        return endpoint
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"
