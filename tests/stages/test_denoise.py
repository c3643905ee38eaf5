"""Tests of the classical denoise stage: block-split invariance, perfect reconstruction at unit
gain, noise removed, channels independent, reset, empty blocks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from streamer.block import Block, StreamLayout
from streamer.config import DenoiseConfig, parse_config
from streamer.errors import BlockLayoutError, ConfigError
from streamer.stages import STAGE_KINDS, DenoiseStage

from ..helpers.offline import replay_wav
from ..helpers.signals import feed, noise, random_splits

ROOT = Path(__file__).resolve().parents[2]
RATE = 16_000


def bursts(seconds: float, rate: int = RATE) -> npt.NDArray[np.float64]:
    """Clean signal: three tone bursts (440 Hz, 1.2 kHz, 700 Hz) with silence between."""
    t = np.arange(round(seconds * rate)) / rate
    x = np.zeros_like(t)
    for a, b, f in ((1.0, 2.0, 440.0), (3.0, 3.6, 1200.0), (4.2, 5.5, 700.0)):
        m = (t >= a) & (t < b)
        x[m] = 0.3 * np.sin(2 * np.pi * f * t[m]) * np.sin(np.pi * (t[m] - a) / (b - a))
    return x


def snr_db(ref: npt.NDArray[np.float64], est: npt.NDArray[np.float64]) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((est - ref) ** 2)))


def whole(stage: DenoiseStage, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return feed(stage, x, [x.shape[1]], stage.layout.rate)


def test_registered() -> None:
    assert STAGE_KINDS["denoise"] is DenoiseStage
    cfg = parse_config({"stages": [{"kind": "denoise"}]}, environ={})
    assert isinstance(cfg.stages[0], DenoiseConfig)


@pytest.mark.parametrize(("seed", "channels", "rate"), [(0, 1, 16_000), (1, 2, 48_000)])
def test_denoise_block_split_invariance(seed: int, channels: int, rate: int) -> None:
    x = (bursts(3.0, rate)[None, :] + noise(channels, 3 * rate, seed, level=0.05)).astype(
        np.float32
    )
    reference = whole(DenoiseStage(DenoiseConfig(), StreamLayout(channels, rate)), x)
    stage = DenoiseStage(DenoiseConfig(), StreamLayout(channels, rate))
    sizes = random_splits(x.shape[1], np.random.default_rng(seed), 3 * stage.n_fft)
    np.testing.assert_array_equal(feed(stage, x, sizes, rate), reference)


def test_unit_gain_reconstructs_the_input_delayed_by_the_latency() -> None:
    """With no attenuation allowed the gain is 1: the output is the input, `latency` late
    (after the first frame, which fewer frames cover)."""
    x = noise(2, 20_000, 3)
    stage = DenoiseStage(DenoiseConfig(max_attenuation_db=0.0), StreamLayout(2, RATE))
    y = feed(stage, x, random_splits(x.shape[1], np.random.default_rng(3), 2000), RATE)
    d, n = stage.latency, stage.n_fft
    assert d == n - 1 and stage.n_fft == 256  # 16 ms at 16 kHz
    np.testing.assert_allclose(y[:, d + n :], x[:, n : x.shape[1] - d], atol=1e-6)


def test_removes_white_noise_and_keeps_the_bursts() -> None:
    clean = bursts(6.0)
    x = (clean + 0.05 * np.random.default_rng(4).standard_normal(clean.size)).astype(np.float32)
    stage = DenoiseStage(DenoiseConfig(), StreamLayout(1, RATE))
    y = feed(stage, x[None, :], [256] * (x.size // 256) + [x.size % 256], RATE)[0]
    d = stage.latency
    out, ref, noisy = y[d:].astype(np.float64), clean[: x.size - d], x[: x.size - d]
    assert snr_db(ref, noisy) < 7.0
    assert snr_db(ref, out) > snr_db(ref, noisy) + 10.0  # measured: 6.4 -> 19.5 dB
    t = np.arange(out.size) / RATE
    gap = (t > 2.2) & (t < 2.9)  # noise only, a second after the start
    removed_db = 10 * np.log10(np.mean(noisy[gap] ** 2) / np.mean(out[gap] ** 2))
    assert removed_db == pytest.approx(15.0, abs=1.5)  # down to the gain floor


def test_channels_are_independent() -> None:
    clean = bursts(4.0)
    rng = np.random.default_rng(5)
    x = np.stack([clean + 0.05 * rng.standard_normal(clean.size), 0.2 * clean]).astype(np.float32)
    both = whole(DenoiseStage(DenoiseConfig(), StreamLayout(2, RATE)), x)
    for c in range(2):
        alone = whole(DenoiseStage(DenoiseConfig(), StreamLayout(1, RATE)), x[c : c + 1])
        np.testing.assert_allclose(both[c], alone[0], atol=1e-7)


def test_reset_gives_fresh_output_and_empty_blocks_change_nothing() -> None:
    x = (bursts(2.0) + 0.05 * np.random.default_rng(6).standard_normal(2 * RATE)).astype(
        np.float32
    )[None, :]
    stage = DenoiseStage(DenoiseConfig(), StreamLayout(1, RATE))
    first = whole(stage, x)
    stage.reset()
    sizes = [0, 1000, 0, 0, x.shape[1] - 1000, 0]
    np.testing.assert_array_equal(feed(stage, x, sizes, RATE), first)


def test_layout_mismatch_raises() -> None:
    stage = DenoiseStage(DenoiseConfig(name="dn"), StreamLayout(2, RATE))
    with pytest.raises(BlockLayoutError, match=r"block has 1 channels, denoise stage 'dn'"):
        stage.process(Block(np.zeros((1, 10), np.float32), "t", 0, 0, RATE, 0))


@pytest.mark.parametrize(
    ("stage", "match"),
    [
        ({"frame_ms": 0.5}, r"stages\[0\]\.frame_ms: Input should be greater than 1"),
        ({"hop_ratio": 3}, r"stages\[0\]\.hop_ratio: Input should be 2 or 4"),
        ({"method": "magic"}, r"stages\[0\]\.method: Input should be 'classical'"),
        ({"max_attenuation_db": -3}, r"stages\[0\]\.max_attenuation_db"),
    ],
)
def test_config_errors(stage: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({"stages": [{"kind": "denoise", **stage}]}, environ={})


def test_replay_with_the_example_config(tmp_path: Path) -> None:
    clean = bursts(3.0)
    noisy = (clean + 0.05 * np.random.default_rng(7).standard_normal(clean.size)).astype(
        np.float32
    )
    y, rate = replay_wav(tmp_path, noisy, RATE, ROOT / "config" / "denoise-classical.toml")
    assert rate == RATE and y.size == noisy.size
    d = DenoiseStage(DenoiseConfig(), StreamLayout(1, RATE)).latency
    assert snr_db(clean[: y.size - d], y[d:]) > snr_db(clean, noisy) + 8.0
