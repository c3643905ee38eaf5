"""A resample in a chain: the stages after it, the sinks, the latency and the metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from streamer.bench import measure_processing
from streamer.block import StreamLayout
from streamer.cli import main
from streamer.config import load_config, parse_config, with_overrides
from streamer.errors import ConfigError
from streamer.pipeline import build_pipeline
from streamer.stages import build_stages, chain_layouts
from streamer.stages.resample import resample_taps

from .conftest import STREAMER

CHAIN = """
[[stages]]
kind = "resample"
rate = 16000

[[stages]]
kind = "fir"                    # built at 16 kHz: 7 kHz is below its Nyquist
design = "lowpass"
cutoff_hz = 7000.0
numtaps = 255

[pipeline]
block = 256
"""


def write_wav(path: Path, rate: int, channels: int, frames: int) -> np.ndarray:
    x = (0.3 * np.random.default_rng(rate).standard_normal((frames, channels))).astype(np.float32)
    sf.write(path, x, rate, subtype="FLOAT")
    return x


def reference(x: np.ndarray, rate_in: int) -> np.ndarray:
    """upfirdn (the causal resample stream) then lfilter at 16 kHz, (frames, channels)."""
    g = np.gcd(rate_in, 16_000)
    up, down = 16_000 // g, rate_in // g
    y = scipy.signal.upfirdn(resample_taps(up, down), x.astype(np.float64), up, down, axis=0)
    y = y[: -(-x.shape[0] * up // down)]
    taps = scipy.signal.firwin(255, 7000.0, fs=16_000)
    return np.asarray(scipy.signal.lfilter(taps, 1.0, y, axis=0))


def test_replay_writes_the_new_rate(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "cfg.toml").write_text(CHAIN)
    x = write_wav(tmp_path / "in.wav", 48_000, 2, 20_000)
    out = tmp_path / "out.wav"
    proc = subprocess.run(
        [*STREAMER, "replay", str(tmp_path / "in.wav"), "--config", str(tmp_path / "cfg.toml"),
         "--output", str(out)],
        capture_output=True, text=True, env=cli_env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    y, rate = sf.read(out, dtype="float64", always_2d=True)
    assert rate == 16_000 and sf.info(str(out)).subtype == "FLOAT"
    want = reference(x, 48_000)
    assert y.shape == want.shape == (20_000 // 3 + 1, 2)
    assert np.max(np.abs(y - want)) <= 1e-5 * np.max(np.abs(want))
    # 30 samples at 48 kHz for the resample, 127 at 16 kHz (381 at 48 kHz) for the FIR.
    assert (
        "algorithmic latency: 667 samples at 48000 Hz (13.90 ms: block 256 + resample 30 "
        "+ fir 127 at 16000 Hz)"
    ) in proc.stderr
    assert "(48000 Hz, 2 ch, out at 16000 Hz)" in proc.stderr
    assert "in 79 blocks of 256" in proc.stderr  # blocks counted at the source


@pytest.mark.parametrize("block", [1, 100, 4096])
def test_replay_in_process_any_block(tmp_path: Path, block: int) -> None:
    (tmp_path / "cfg.toml").write_text(CHAIN)
    x = write_wav(tmp_path / "in.wav", 44_100, 1, 3_000 if block == 1 else 9_000)
    out = tmp_path / "out.wav"
    argv = ["replay", str(tmp_path / "in.wav"), "--config", str(tmp_path / "cfg.toml")]
    assert main([*argv, "--output", str(out), "--block", str(block)]) == 0
    y, rate = sf.read(out, dtype="float64", always_2d=True)
    want = reference(x, 44_100)
    assert rate == 16_000 and y.shape == want.shape
    assert np.max(np.abs(y - want)) <= 1e-5 * np.max(np.abs(want))


def test_latency_and_metrics_count_at_the_source_rate(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text(CHAIN)
    write_wav(tmp_path / "in.wav", 44_100, 1, 44_100)
    cfg = load_config(tmp_path / "cfg.toml", environ={"STREAMER__SOURCE__KIND": "file"})
    cfg = with_overrides(cfg, {"source": {"path": str(tmp_path / "in.wav")}})
    pipeline = build_pipeline(cfg, publish=False)
    try:
        # 256 + 28 (resample, at 44.1 kHz) + 127 * 44100 / 16000 = 350.04 (the FIR at 16 kHz).
        assert pipeline.algorithmic_latency_s == pytest.approx(
            256 / 44_100 + 28 / 44_100 + 127 / 16_000
        )
        assert pipeline.algorithmic_latency == 635  # 634.04, rounded up
        assert pipeline.out_layout.rate == 16_000
        pipeline.start()
        assert pipeline.wait(timeout=30)
    finally:
        pipeline.close()
    assert pipeline.error is None
    snap = pipeline.snapshot()
    assert snap["frames"] == 44_100 and snap["signal_s"] == 1.0  # source frames, at 44.1 kHz
    assert snap["algorithmic_latency_samples"] == 635
    assert snap["algorithmic_latency_ms"] == pytest.approx(14.3774, abs=1e-4)
    assert snap["deadline_misses"] <= snap["blocks"] == 173


def test_reload_refuses_another_output_rate(tmp_path: Path) -> None:
    write_wav(tmp_path / "in.wav", 48_000, 1, 4_800)
    raw = {"source": {"kind": "file", "path": str(tmp_path / "in.wav")},
           "stages": [{"kind": "resample", "rate": 16_000}]}  # fmt: skip
    pipeline = build_pipeline(parse_config(raw, environ={}), publish=False)
    try:
        layout = pipeline.source.layout
        same = build_stages(parse_config({"stages": [{"kind": "resample", "rate": 16_000},
                                                     {"kind": "fir"}]}, environ={}).stages,
                            layout, block=256)  # fmt: skip
        pipeline.replace_stages(same)  # the same output: fine
        other = build_stages(parse_config({"stages": [{"kind": "fir"}]}, environ={}).stages,
                             layout, block=256)  # fmt: skip
        with pytest.raises(ConfigError, match=r"would output 1 ch at 48000 Hz, the sinks were "
                           r"opened for 1 ch at 16000 Hz"):  # fmt: skip
            pipeline.replace_stages(other)
    finally:
        pipeline.close()


def test_bench_counts_the_source_block() -> None:
    cfg = parse_config({"stages": [{"kind": "resample", "rate": 16_000}]}, environ={})
    signal = np.random.default_rng(1).standard_normal((1, 48_000)).astype(np.float32)
    point = measure_processing(
        cfg, signal, 48_000, 480, warmup_blocks=5, min_blocks=50, min_seconds=0.0
    )
    assert point.period_ms == pytest.approx(10.0)
    assert point.algorithmic_latency_samples == 480 + 30
    assert point.algorithmic_latency_ms == pytest.approx(510 / 48)
    # Signal time is source frames at the source rate: RTF and CPU per second agree.
    assert point.rtf < 1 and point.cpu_per_signal_s < 1


def test_example_config_builds() -> None:
    cfg = load_config(Path(__file__).parent.parent / "config" / "resample.toml", environ={})
    stages = build_stages(cfg.stages, StreamLayout(1, 48_000), block=cfg.pipeline.block)
    assert [(s.name, s.latency) for s in stages] == [("resample", 30), ("fir", 127), ("anomaly", 0)]
    assert chain_layouts(stages, StreamLayout(1, 48_000))[-1] == StreamLayout(1, 16_000)
