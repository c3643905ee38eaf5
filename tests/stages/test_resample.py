"""The resample stage against scipy.signal.upfirdn and resample_poly, on any block split."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal as sp_signal

from streamer.block import Block, StreamLayout
from streamer.config import FirConfig, ResampleConfig, parse_config
from streamer.errors import BlockLayoutError, ConfigError
from streamer.stages import build_stages, chain_latency_s, chain_layouts
from streamer.stages.fir import FirStage
from streamer.stages.resample import ResampleStage, resample_taps

from ..helpers.alloc import peak_extra_bytes
from ..helpers.signals import noise, random_splits, tones

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# (input rate, output rate, up, down)
RATES = [
    (48_000, 16_000, 1, 3),
    (44_100, 48_000, 160, 147),
    (25_600, 16_000, 5, 8),
    (16_000, 48_000, 3, 1),
]
RATE_IDS = [f"{a // 100 / 10:g}k-{b // 100 / 10:g}k" for a, b, _, _ in RATES]


def resampler(
    channels: int, rate_in: int, rate_out: int, *, block_hint: int = 256, index: int = 0,
    **cfg: Any,
) -> ResampleStage:  # fmt: skip
    return ResampleStage(
        ResampleConfig(rate=rate_out, **cfg), StreamLayout(channels, rate_in),
        index=index, block_hint=block_hint,
    )  # fmt: skip


def signal(channels: int, frames: int, rate: int, seed: int) -> F32:
    mix = noise(channels, frames, seed) + tones(channels, frames, rate, (300.0, 5_000.0), seed)
    return mix.astype(np.float32)


def stream(
    stage: ResampleStage, x: F32, sizes: Sequence[int], *, taken: int = 0, given: int = 0
) -> F32:
    """Stream ``x`` through ``stage`` in blocks of ``sizes``; join the output.

    Checks the contract on every block: metadata kept but ``t0`` (output samples
    given so far) and ``rate`` (the new one); ``ceil(n * up / down)`` outputs
    after n inputs; output fresh, float32, C-contiguous, writeable. ``taken`` and
    ``given`` are the input and output samples the stage has already seen and given.
    """
    assert sum(sizes) == x.shape[1], "sizes must cover the signal"
    rate_in, rate_out = stage.layout.rate, stage.out_layout.rate
    outs: list[F32] = []
    start = taken
    for seq, n in enumerate(sizes):
        samples = np.ascontiguousarray(x[:, taken - start : taken - start + n])
        block = Block(samples, "test", seq, taken, rate_in, captured_ns=seq)
        result = stage.process(block)
        y = result.samples
        taken += n
        assert (result.stream, result.seq, result.t0, result.rate, result.captured_ns) == (
            "test", seq, given, rate_out, seq,
        )  # fmt: skip
        assert y.dtype == np.float32 and y.flags.c_contiguous and y.flags.writeable
        assert y.shape == (x.shape[0], -(-taken * stage.up // stage.down) - given)
        assert not np.shares_memory(y, samples)
        assert not any(np.shares_memory(y, prev) for prev in outs[-1:])
        outs.append(y)
        given += y.shape[1]
    return np.concatenate(outs, axis=1) if outs else x[:, :0].copy()


def upfirdn_ref(stage: ResampleStage, x: F32) -> F64:
    """The causal stream: upfirdn of the whole signal, as long as the input allows."""
    y = sp_signal.upfirdn(stage.taps, x.astype(np.float64), stage.up, stage.down, axis=1)
    return np.asarray(y[:, : -(-x.shape[1] * stage.up // stage.down)])


def assert_close_to_peak(y: F32 | F64, ref: F64, rel: float) -> None:
    assert y.shape == ref.shape
    peak = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(y - ref), initial=0.0))
    assert err <= rel * peak, f"max error {err:.3g} > {rel:g} x peak {peak:.3g}"


# ------------------------------------------------------------- offline twins


@pytest.mark.parametrize("channels", [1, 3], ids=["mono", "3ch"])
@pytest.mark.parametrize(("rate_in", "rate_out", "up", "down"), RATES, ids=RATE_IDS)
@pytest.mark.parametrize("seed", range(3))
def test_resample_matches_upfirdn(
    rate_in: int, rate_out: int, up: int, down: int, channels: int, seed: int
) -> None:
    block_hint = (64, 256, 1024)[seed]
    stage = resampler(channels, rate_in, rate_out, block_hint=block_hint)
    assert (stage.up, stage.down) == (up, down)
    x = signal(channels, 12_000, rate_in, seed)
    rng = np.random.default_rng(seed * 10 + channels)
    # 0- and 1-frame blocks, and blocks of up to 4000 frames: several kernel chunks.
    y = stream(stage, x, random_splits(x.shape[1], rng, 4_000))
    assert_close_to_peak(y, upfirdn_ref(stage, x), 1e-6)


@pytest.mark.parametrize(
    ("rate_in", "rate_out", "up", "down"), [r for r in RATES if r[0] != 44_100], ids=RATE_IDS[:1]
    + RATE_IDS[2:],
)  # fmt: skip
def test_resample_is_resample_poly_delayed_by_its_latency(
    rate_in: int, rate_out: int, up: int, down: int
) -> None:
    """scipy centres the filter; the stream lags by the group delay, ``latency`` input
    samples (here a whole number of output samples, so the two line up exactly)."""
    stage = resampler(2, rate_in, rate_out)
    x = signal(2, 8_000, rate_in, seed=4)
    y = stream(stage, x, random_splits(x.shape[1], np.random.default_rng(4), 700))
    ref = sp_signal.resample_poly(x.astype(np.float64), up, down, axis=1)
    delay = stage.latency * up // down
    assert delay * down == stage.latency * up  # a whole number of output samples
    assert y.shape == ref.shape
    assert_close_to_peak(y[:, delay:], ref[:, : ref.shape[1] - delay], 1e-6)


def test_resample_matches_naive_polyphase() -> None:
    """The definition written out: y[m] = sum_k h[k] x_up[m * down - k], zero-stuffed."""
    stage = resampler(1, 25_600, 16_000, half_taps=2, window="hann")
    x = noise(1, 53, seed=9)
    x_up = np.zeros(x.shape[1] * stage.up)
    x_up[:: stage.up] = x[0]
    h = stage.taps
    n_out = -(-x.shape[1] * stage.up // stage.down)
    ref = np.array([
        sum(h[k] * x_up[m * stage.down - k] for k in range(h.size) if m * stage.down - k >= 0)
        for m in range(n_out)
    ])  # fmt: skip
    y = stream(stage, x, [0, 1, 1, 5, 0, 13, 33])
    assert_close_to_peak(y[0], ref, 1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_resample_block_split_invariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rate_in, rate_out, _, _ = RATES[seed % len(RATES)]
    channels = int(rng.integers(1, 4))
    frames = int(rng.integers(0, 6_000))
    block_hint = int(rng.choice([1, 16, 100, 256, 2048]))
    x = signal(channels, frames, rate_in, seed)
    whole = stream(resampler(channels, rate_in, rate_out, block_hint=frames or 1), x, [frames])
    stage = resampler(channels, rate_in, rate_out, block_hint=block_hint)
    split = stream(stage, x, random_splits(frames, rng, int(rng.integers(1, 3_000))))
    peak = max(float(np.max(np.abs(whole), initial=0.0)), 1e-30)
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-6 * peak)


def test_large_ratio_works_in_small_chunks() -> None:
    """1 kHz to 768 kHz: 768 outputs per input, so a block is cut into short chunks."""
    stage = resampler(2, 1_000, 768_000, block_hint=4_096)
    assert stage.up == 768 and stage._chunk < 100
    x = noise(2, 600, seed=3)
    y = stream(stage, x, [0, 1, 599])
    assert_close_to_peak(y, upfirdn_ref(stage, x), 1e-6)


def test_equal_rates_pass_through() -> None:
    stage = resampler(2, 16_000, 16_000)
    assert (stage.up, stage.down, stage.latency) == (1, 1, 0)
    x = noise(2, 500, seed=1)
    np.testing.assert_array_equal(stream(stage, x, [0, 1, 200, 299]), x)


# ------------------------------------------------------------ stage contract


def test_empty_block_leaves_state_intact() -> None:
    x = signal(2, 700, 44_100, seed=5)
    with_empty = resampler(2, 44_100, 48_000)
    without = resampler(2, 44_100, 48_000)
    a = stream(with_empty, x[:, :300], [300])
    empty = Block(np.zeros((2, 0), np.float32), "s", seq=9, t0=300, rate=44_100, captured_ns=1)
    out = with_empty.process(empty)
    assert out.samples.shape == (2, 0) and out.samples.dtype == np.float32
    assert (out.seq, out.t0, out.rate, out.stream) == (9, a.shape[1], 48_000, "s")
    b = stream(with_empty, x[:, 300:], [400], taken=300, given=a.shape[1])
    assert a.shape[1] + b.shape[1] == math.ceil(700 * 160 / 147)
    np.testing.assert_array_equal(np.hstack([a, b]), stream(without, x, [700]))


def test_reset_gives_fresh_output() -> None:
    used = resampler(3, 48_000, 16_000, block_hint=64)
    stream(used, signal(3, 1_001, 48_000, seed=1), [500, 501])
    used.reset()
    x = signal(3, 800, 48_000, seed=2)
    fresh = resampler(3, 48_000, 16_000, block_hint=64)
    np.testing.assert_array_equal(stream(used, x, [800]), stream(fresh, x, [800]))


def test_shared_arrays_are_read_only() -> None:
    stage = resampler(1, 44_100, 48_000)
    assert not stage.taps.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        stage.taps[0] = 1.0


def test_layout_mismatch_raises() -> None:
    stage = resampler(2, 48_000, 16_000, name="to16k")
    mono = Block(np.zeros((1, 8), np.float32), "s", seq=0, t0=0, rate=48_000, captured_ns=0)
    with pytest.raises(
        BlockLayoutError, match=r"block has 1 channels, resample stage 'to16k' was built for 2"
    ):
        stage.process(mono)
    # A block already at the output rate is refused too: the stage sits before the change.
    late = Block(np.zeros((2, 8), np.float32), "s", seq=0, t0=0, rate=16_000, captured_ns=0)
    with pytest.raises(
        BlockLayoutError, match=r"block rate is 16000 Hz, resample stage 'to16k' .* 48000 Hz"
    ):
        stage.process(late)


def test_name_and_layouts() -> None:
    stage = resampler(3, 25_600, 16_000)
    assert stage.name == "resample"
    assert stage.layout == StreamLayout(3, 25_600)
    assert stage.out_layout == StreamLayout(3, 16_000)


def test_hot_path_allocates_only_the_output() -> None:
    stage = resampler(2, 44_100, 48_000, block_hint=256)
    rng = np.random.default_rng(0)
    blocks = [
        Block(rng.standard_normal((2, 256)).astype(np.float32), "s", k, 256 * k, 44_100, 0)
        for k in range(30)
    ]
    # The ~2.2 KiB output, the new Block and array views; the gathered inputs alone
    # (2 x 279 x 21 float64) would add 92 KiB if made per block.
    assert max(peak_extra_bytes(stage, blocks)) < 4 * 1_024


# -------------------------------------------------------------------- latency


@pytest.mark.parametrize(
    ("rate_in", "rate_out", "latency"),
    [(48_000, 16_000, 30), (44_100, 48_000, 10), (25_600, 16_000, 16), (16_000, 48_000, 10),
     (44_100, 16_000, 28)],
)  # fmt: skip
def test_latency_is_the_group_delay(rate_in: int, rate_out: int, latency: int) -> None:
    stage = resampler(1, rate_in, rate_out)
    h = stage.taps
    np.testing.assert_allclose(h, h[::-1], atol=1e-12 * np.max(np.abs(h)))  # linear phase
    # Group delay (numtaps - 1) / 2 at the upsampled rate, in input samples, rounded up.
    assert stage.latency == math.ceil((h.size - 1) / 2 / stage.up) == latency


def test_latency_is_where_an_impulse_peaks() -> None:
    """An impulse at input 0 comes out centred on input time ``latency``."""
    stage = resampler(1, 16_000, 48_000)
    impulse = np.zeros((1, 100), np.float32)
    impulse[0, 0] = 1.0
    y = stream(stage, impulse, [100])
    assert int(np.argmax(y[0])) == stage.latency * stage.up // stage.down == 30


def test_chain_layouts_and_latency_after_a_resample() -> None:
    cfg = parse_config(
        {"stages": [{"kind": "resample", "rate": 16_000},
                    {"kind": "fir", "design": "lowpass", "cutoff_hz": 7_000.0, "numtaps": 255}]},
        environ={},
    )  # fmt: skip
    source = StreamLayout(2, 48_000)
    resample, fir = build_stages(cfg.stages, source, block=512)
    at16k = StreamLayout(2, 16_000)
    assert chain_layouts([resample, fir], source) == [source, at16k, at16k]
    assert isinstance(fir, FirStage) and fir.layout == at16k
    # 30 samples at 48 kHz, then 127 at 16 kHz.
    assert chain_latency_s([resample, fir], source) == pytest.approx(30 / 48_000 + 127 / 16_000)


def test_taps_are_resample_polys_design() -> None:
    expected = sp_signal.firwin(2 * 10 * 160 + 1, 1 / 160, window=("kaiser", 5.0)) * 160
    np.testing.assert_array_equal(resample_taps(160, 147), expected)
    np.testing.assert_array_equal(resample_taps(1, 1), [1.0])


# ------------------------------------------------------------------- config


def test_ratio_too_large_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"48000 Hz to 47999 Hz is a ratio of 47999/48000: both terms must "
        r"be at most 4096"
    ) as err:  # fmt: skip
        resampler(1, 48_000, 47_999, index=2)
    assert err.value.key == "stages[2].rate"
    assert str(err.value).startswith("config: stages[2].rate: ")


@pytest.mark.parametrize("window", ["foo", "kaiser", ("hann", 5.0)])
def test_bad_window(window: str | tuple[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"window .* is not a window firwin can use") as err:
        resampler(1, 48_000, 16_000, window=window, index=1)
    assert err.value.key == "stages[1].window"
    with pytest.raises(ConfigError, match=r"is not a window firwin can use"):
        resampler(1, 16_000, 16_000, window=window)  # no filter needed, still refused


def test_bad_window_through_a_config_names_its_stage() -> None:
    cfg = parse_config(
        {"stages": [{"kind": "fir"}, {"kind": "resample", "rate": 16_000, "window": "nope"}]},
        environ={},
    )
    with pytest.raises(ConfigError, match=r"stages\[1\]\.window: window 'nope'"):
        build_stages(cfg.stages, StreamLayout(1, 48_000), block=256)


@pytest.mark.parametrize(
    ("stage", "key", "reason"),
    [
        ({}, "stages[0].rate", "Field required"),
        ({"rate": 0}, "stages[0].rate", "greater than or equal to 1"),
        ({"rate": 16_000, "half_taps": 0}, "stages[0].half_taps", "greater than or equal to 1"),
        ({"rate": 16_000, "half_taps": 101}, "stages[0].half_taps", "less than or equal to 100"),
        ({"rate": 16_000, "cutoff_hz": 100.0}, "stages[0].cutoff_hz", "unknown key"),
    ],
)
def test_config_errors_name_the_key(stage: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as err:
        parse_config({"stages": [{"kind": "resample", **stage}]}, environ={})
    assert err.value.key == key


def test_config_round_trip() -> None:
    cfg = parse_config(
        {"stages": [{"kind": "resample", "rate": 16_000, "window": ["kaiser", 8.0],
                     "half_taps": 16, "name": "to16k"}]},
        environ={"STREAMER__STAGES__0__RATE": "22050"},
    )  # fmt: skip
    (stage,) = cfg.stages
    assert isinstance(stage, ResampleConfig) and not isinstance(stage, FirConfig)
    assert (stage.rate, stage.window, stage.half_taps, stage.name) == (
        22_050, ("kaiser", 8.0), 16, "to16k",
    )  # fmt: skip
