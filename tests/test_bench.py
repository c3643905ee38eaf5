"""The bench's arithmetic on a pipeline with a known per-block delay, and the command's outputs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from streamer.bench import BenchPoint, knee, measure_processing, recommend, record_signal
from streamer.block import Block, StreamLayout
from streamer.config import load_config
from streamer.stages.base import Stage

from .conftest import STREAMER

DELAY_MS = 1.0


class BusyStage:
    """Spins for a fixed time per block: a stage of known cost and declared latency."""

    name = "busy"
    latency = 100

    def __init__(self, delay_ms: float):
        self._delay_ns = int(delay_ms * 1e6)

    def process(self, block: Block) -> Block:
        end = time.perf_counter_ns() + self._delay_ns
        while time.perf_counter_ns() < end:
            pass
        return block

    def reset(self) -> None:
        pass


def busy_stages(layout: StreamLayout, block: int) -> list[Stage]:
    return [BusyStage(DELAY_MS)]


@pytest.fixture(scope="module")
def points() -> dict[int, BenchPoint]:
    cfg = load_config(None, environ={})
    signal, rate = record_signal(cfg, 1.0)
    assert rate == 48000 and signal.shape == (1, 48000)
    return {
        block: measure_processing(
            cfg, signal, rate, block, warmup_blocks=20, min_blocks=200, min_seconds=0.0,
            max_seconds=5.0, make_stages=busy_stages,
        )
        for block in (32, 64, 128, 256)
    }  # fmt: skip


def test_known_delay_is_measured(points: dict[int, BenchPoint]) -> None:
    for block, p in points.items():
        assert p.blocks_measured >= 200
        assert p.period_ms == pytest.approx(block / 48.0)
        assert p.algorithmic_latency_samples == block + 100
        assert p.algorithmic_latency_ms == pytest.approx((block + 100) / 48.0)
        assert DELAY_MS <= p.processing_ms["p50"] <= DELAY_MS * 1.3
        assert p.stages_ms["busy"]["p50"] == pytest.approx(DELAY_MS, rel=0.2)
        assert p.processing_ms["p50"] <= p.processing_ms["p99"] <= p.processing_ms["max"]
        # RTF is processing time over signal time: ~ delay / period.
        assert p.rtf == pytest.approx(DELAY_MS / p.period_ms, rel=0.25)


def test_deadline_misses_follow_the_period(points: dict[int, BenchPoint]) -> None:
    assert points[32].miss_rate == 1.0  # 1 ms of work in a 0.67 ms period
    assert points[256].miss_rate < 0.01  # ... and in a 5.3 ms period


def test_conclusions_on_measured_points(points: dict[int, BenchPoint]) -> None:
    measured = list(points.values())
    assert recommend(measured, 0.5) in (128, 256)  # 1 ms fits half of 2.67 ms, not of 1.33
    assert knee(measured) in (64, 128)


def point(block: int, p99: float, miss_rate: float) -> BenchPoint:
    return BenchPoint(
        block=block, rate=48000, streams=1, backend="numpy", period_ms=block / 48.0,
        algorithmic_latency_samples=block, algorithmic_latency_ms=block / 48.0,
        blocks_measured=100, processing_ms={"p50": p99 / 2, "p99": p99, "max": p99},
        stages_ms={}, miss_rate=miss_rate, rtf=0.1, cpu_per_signal_s=0.1, realtime_streams=1,
    )  # fmt: skip


def test_recommend_and_knee_rules() -> None:
    pts = [point(32, 0.9, 0.5), point(64, 0.7, 0.02), point(128, 0.7, 0.0), point(256, 1.0, 0.0)]
    assert recommend(pts, 0.5) == 128  # 0.7 ms > half of 1.33 ms at 64, < half of 2.67 at 128
    assert recommend(pts, 0.6) == 64  # 0.7 ms < 0.6 * 1.33 ms
    assert knee(pts) == 128  # 64 misses 2 %: misses begin below 128
    assert knee([*pts, point(512, 1.0, 0.05)]) is None  # the largest misses: nothing keeps up
    assert recommend([point(32, 5.0, 1.0)], 0.5) is None
    assert knee([point(32, 5.0, 1.0)]) is None


def test_bench_command_writes_its_outputs(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [*STREAMER, "bench", "--blocks", "512", "--no-knee", "--out", str(out)],
        capture_output=True, text=True, env=cli_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "numpy: recommended block" in proc.stdout
    report = json.loads((out / "bench.json").read_text())
    # The default pipeline's FIR stage runs on numpy and on torch's CPU kernels.
    rows = {row["backend"]: row for row in report["points"]}
    assert set(rows) == {"numpy", "torch"} | ({"cuda"} if "cuda" in report["backends"] else set())
    for row in rows.values():
        assert row["block"] == 512 and row["blocks_measured"] >= 1000
        assert row["end_to_end_count"] > 10
        assert 0 < row["end_to_end_ms"]["p50"] < row["period_ms"] + row["algorithmic_latency_ms"]
        assert set(row["stages_ms"]) == {"fir", "anomaly"}
    assert set(report["backends"]) | set(report["skipped_backends"]) == {"numpy", "torch", "cuda"}
    assert report["machine"]["cores"] >= 1
    csv_lines = (out / "bench.csv").read_text().splitlines()
    assert csv_lines[0].startswith("block,rate,streams") and len(csv_lines) == 1 + len(rows)
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_refuses_bad_options(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [*STREAMER, "bench", "--share", "2"], capture_output=True, text=True, env=cli_env,
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--share 2.0 must be in (0, 1]" in proc.stderr


def test_backends_move_only_the_stages_that_have_them() -> None:
    from streamer.bench import with_backend
    from streamer.config import parse_config

    fir = {"kind": "fir", "design": "lowpass", "cutoff_hz": 1000.0, "numtaps": 63,
           "algorithm": "nonuniform"}  # fmt: skip
    cfg = parse_config({"stages": [fir, {"kind": "anomaly"}]}, environ={})
    moved, why = with_backend(cfg, "torch")
    assert moved is not None and why == ""
    stage = moved.stages[0]
    assert (stage.backend, stage.device, stage.algorithm) == ("torch", "cpu", "partitioned")
    assert moved.stages[1] == cfg.stages[1]
    numpy_cfg, _ = with_backend(moved, "numpy")
    assert numpy_cfg is not None and numpy_cfg.stages[0].backend == "numpy"
    only_anomaly = parse_config({"stages": [{"kind": "anomaly"}]}, environ={})
    assert with_backend(only_anomaly, "torch") == (None, "no stage of this pipeline runs on torch")
    none, why = with_backend(cfg, "cuda")
    import torch

    if not torch.cuda.is_available():
        assert none is None and why == "torch sees no CUDA device"
