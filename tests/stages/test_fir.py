"""The overlap-save FIR stage against lfilter, oaconvolve and np.convolve, on any block split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal as sp_signal
import soundfile as sf

from streamer.block import Block, StreamLayout
from streamer.config import FirConfig, FirDesign, parse_config
from streamer.errors import BlockLayoutError, ConfigError, InputFileError
from streamer.stages.fir import FirStage, design_taps, fft_size_for, load_taps

from ..helpers.signals import feed, noise, random_splits, tones

RATE = 48_000
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

CUTOFFS: dict[str, float | tuple[float, float]] = {
    "lowpass": 4_000.0,
    "highpass": 2_000.0,
    "bandpass": (1_000.0, 6_000.0),
    "bandstop": (1_000.0, 6_000.0),
}


def fir(channels: int = 1, *, block_hint: int = 256, index: int = 0, **cfg: Any) -> FirStage:
    return FirStage(
        FirConfig(**cfg), StreamLayout(channels, RATE), index=index, block_hint=block_hint
    )


def from_file(path: Path, channels: int = 1, **kw: Any) -> FirStage:
    return fir(channels, taps_file=path, **kw)


def signal(channels: int, frames: int, seed: int) -> F32:
    mix = noise(channels, frames, seed) + tones(channels, frames, RATE, (300.0, 5_000.0), seed)
    return mix.astype(np.float32)


def lfilter_ref(taps: F64, x: F32) -> F64:
    """Whole-signal reference in float64: row c of ``taps`` (or the only row) on channel c."""
    x64 = x.astype(np.float64)
    if taps.shape[0] == 1:
        return np.asarray(sp_signal.lfilter(taps[0], 1.0, x64, axis=-1))
    return np.stack([sp_signal.lfilter(h, 1.0, ch) for h, ch in zip(taps, x64, strict=True)])


def assert_close_to_peak(y: F32 | F64, ref: F64, rel: float) -> None:
    peak = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(y - ref), initial=0.0))
    assert err <= rel * peak, f"max error {err:.3g} > {rel:g} x peak {peak:.3g}"


def one_block(stage: FirStage, x: F32) -> F32:
    return feed(stage, x, [x.shape[1]], RATE)


# ------------------------------------------------------------- offline twins

LFILTER_CASES = [
    (design, numtaps)
    for design in CUTOFFS
    for numtaps in (1, 2, 31, 511, 2049)
    if not (design in ("highpass", "bandstop") and numtaps % 2 == 0)
]


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize(("design", "numtaps"), LFILTER_CASES)
def test_fir_matches_lfilter(design: str, numtaps: int, channels: int) -> None:
    stage = fir(channels, design=design, cutoff_hz=CUTOFFS[design], numtaps=numtaps)
    expected = sp_signal.firwin(numtaps, CUTOFFS[design], pass_zero=design, fs=RATE)
    np.testing.assert_array_equal(stage.taps, expected[np.newaxis])

    x = signal(channels, 6_000, seed=numtaps)
    rng = np.random.default_rng(numtaps + channels)
    y = feed(stage, x, random_splits(x.shape[1], rng, stage.nfft + 37), RATE)
    assert_close_to_peak(y, lfilter_ref(stage.taps, x), 1e-5)


@pytest.mark.parametrize("rows", [1, 2], ids=["shared", "per-channel"])
def test_fir_matches_oaconvolve(tmp_path: Path, rows: int) -> None:
    rng = np.random.default_rng(7)
    ir = rng.standard_normal((rows, 300)) * np.exp(-np.arange(300) / 60.0)
    np.save(tmp_path / "ir.npy", ir if rows == 2 else ir[0])
    stage = from_file(tmp_path / "ir.npy", 2, block_hint=128)
    x = signal(2, 9_000, seed=3)
    y = feed(stage, x, random_splits(x.shape[1], rng, 2 * stage.nfft), RATE)

    n = x.shape[1]
    h = np.broadcast_to(ir, (2, ir.shape[1]))
    ref = np.stack(
        [sp_signal.oaconvolve(ch.astype(np.float64), hc)[:n] for ch, hc in zip(x, h, strict=True)]
    )
    assert_close_to_peak(y, ref, 1e-5)


def test_fir_matches_naive_convolve(tmp_path: Path) -> None:
    h = np.array([0.5, -1.0, 2.0, 0.25, 3.0])
    np.savetxt(tmp_path / "h.txt", h)
    stage = from_file(tmp_path / "h.txt", block_hint=4)
    assert (stage.nfft, stage.fft_block) == (8, 4)
    x = noise(1, 23, seed=1)
    # Blocks of 0 and 1 frames, shorter and longer than L = 4, and longer than nfft = 8.
    y = feed(stage, x, [0, 1, 3, 7, 0, 12], RATE)
    ref = np.convolve(x[0].astype(np.float64), h)[: x.shape[1]]
    assert_close_to_peak(y[0], ref, 1e-6)


@pytest.mark.parametrize("seed", range(24))
def test_fir_block_split_invariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    numtaps = int(rng.choice([1, 2, 7, 64, 255, 1000]))
    block_hint = int(rng.choice([1, 16, 100, 256, 1000]))
    channels = int(rng.integers(1, 4))
    frames = int(rng.integers(0, 5_000))

    def build() -> FirStage:
        cutoff = float(rng.uniform(500, 20_000))
        return fir(
            channels, design="lowpass", cutoff_hz=cutoff, numtaps=numtaps, block_hint=block_hint
        )

    state = rng.bit_generator.state
    stage = build()
    rng.bit_generator.state = state  # the same cutoff for the one-block twin
    x = signal(channels, frames, seed)
    whole = one_block(build(), x)
    sizes = random_splits(frames, rng, stage.nfft + int(rng.integers(1, 50)))
    split = feed(stage, x, sizes, RATE)

    peak = max(float(np.max(np.abs(whole), initial=0.0)), 1e-30)
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-6 * peak)


# ------------------------------------------------------------ stage contract


def test_empty_block_leaves_state_intact() -> None:
    x = signal(2, 700, seed=5)
    with_empty = fir(2, design="lowpass", cutoff_hz=3_000.0, numtaps=101)
    without = fir(2, design="lowpass", cutoff_hz=3_000.0, numtaps=101)

    empty = Block(np.zeros((2, 0), np.float32), "s", seq=9, t0=300, rate=RATE, captured_ns=1)
    a = feed(with_empty, x[:, :300], [300], RATE)
    out = with_empty.process(empty)
    assert out.samples.shape == (2, 0) and out.samples.dtype == np.float32
    assert (out.seq, out.t0, out.stream) == (9, 300, "s")
    b = feed(with_empty, x[:, 300:], [400], RATE)

    np.testing.assert_array_equal(np.hstack([a, b]), feed(without, x, [300, 400], RATE))


def test_reset_gives_fresh_output() -> None:
    used = fir(2, design="bandpass", cutoff_hz=(500.0, 4_000.0), numtaps=257)
    feed(used, signal(2, 1_000, seed=1), [1_000], RATE)
    used.reset()
    x = signal(2, 800, seed=2)
    fresh = fir(2, design="bandpass", cutoff_hz=(500.0, 4_000.0), numtaps=257)
    np.testing.assert_array_equal(feed(used, x, [800], RATE), feed(fresh, x, [800], RATE))


def test_shared_arrays_are_read_only() -> None:
    stage = fir(1, design="lowpass", cutoff_hz=1_000.0, numtaps=31)
    assert not stage.taps.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        stage.taps[0, 0] = 1.0


def test_layout_mismatch_raises() -> None:
    stage = fir(2, design="lowpass", cutoff_hz=1_000.0, numtaps=31, name="lp")
    mono = Block(np.zeros((1, 8), np.float32), "s", seq=0, t0=0, rate=RATE, captured_ns=0)
    with pytest.raises(
        BlockLayoutError, match=r"block has 1 channels, fir stage 'lp' was built for 2"
    ):
        stage.process(mono)
    slow = Block(np.zeros((2, 8), np.float32), "s", seq=0, t0=0, rate=44_100, captured_ns=0)
    with pytest.raises(
        BlockLayoutError, match=r"block rate is 44100 Hz, fir stage 'lp' .* 48000 Hz"
    ):
        stage.process(slow)


def test_name_defaults_to_kind() -> None:
    assert fir(design="lowpass", cutoff_hz=1_000.0, numtaps=3).name == "fir"


@pytest.mark.parametrize(
    ("numtaps", "block", "nfft"),
    [(1, 1, 1), (1, 256, 256), (5, 4, 8), (511, 256, 768), (2049, 256, 2304)],
)
def test_fft_size_for(numtaps: int, block: int, nfft: int) -> None:
    assert fft_size_for(numtaps, block) == nfft
    assert nfft - numtaps + 1 >= block


def test_fft_size_for_refuses_nonpositive() -> None:
    with pytest.raises(ValueError, match="numtaps=0 must be >= 1"):
        fft_size_for(0, 16)
    with pytest.raises(ValueError, match="block=0 must be >= 1"):
        fft_size_for(16, 0)


# ----------------------------------------------------------------- taps files


def test_per_channel_taps_from_npy(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    taps = rng.standard_normal((2, 64))
    np.save(tmp_path / "h.npy", taps)
    stage = from_file(tmp_path / "h.npy", 2, block_hint=32)
    np.testing.assert_array_equal(stage.taps, taps)
    x = signal(2, 1_500, seed=4)
    y = feed(stage, x, random_splits(1_500, rng, stage.nfft + 5), RATE)
    assert_close_to_peak(y, lfilter_ref(taps, x), 1e-5)


def test_taps_from_txt_and_csv(tmp_path: Path) -> None:
    shared = np.array([0.25, 0.5, 0.25, -0.125])
    np.savetxt(tmp_path / "shared.txt", shared)
    stage = from_file(tmp_path / "shared.txt", 2)
    np.testing.assert_array_equal(stage.taps, shared[np.newaxis])
    x = signal(2, 500, seed=8)
    assert_close_to_peak(one_block(stage, x), lfilter_ref(stage.taps, x), 1e-5)

    (tmp_path / "rows.csv").write_text("1, 0.5, 0.25\n-1, 0, 1\n")
    assert load_taps(tmp_path / "rows.csv", 2).tolist() == [[1, 0.5, 0.25], [-1, 0, 1]]
    (tmp_path / "gain.txt").write_text("0.5\n")
    assert load_taps(tmp_path / "gain.txt", 2).tolist() == [[0.5]]


def test_taps_from_stereo_wav_impulse_response(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    ir = 0.05 * rng.standard_normal((2, 400)) * np.exp(-np.arange(400) / 80.0)
    ir[0, 10] = 0.9  # left arrives first and strongest
    ir[1, 25] = 0.5
    sf.write(tmp_path / "room.wav", ir.T, RATE, subtype="DOUBLE")
    stage = from_file(tmp_path / "room.wav", 2, block_hint=64)
    np.testing.assert_array_equal(stage.taps, ir)
    assert stage.latency == 10
    x = signal(2, 3_000, seed=6)
    y = feed(stage, x, random_splits(3_000, rng, stage.nfft + 3), RATE)
    assert_close_to_peak(y, lfilter_ref(ir, x), 1e-5)


def test_mono_wav_is_shared(tmp_path: Path) -> None:
    sf.write(tmp_path / "mono.flac", np.array([0.5, 0.25, 0.125]), RATE, subtype="PCM_24")
    assert load_taps(tmp_path / "mono.flac", 3).shape == (1, 3)


def _write(name: str, content: Callable[[Path], object]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        content(path)
        return path

    return make


def _wav(data: F64, rate: int = RATE) -> Callable[[Path], object]:
    return lambda p: sf.write(p, data, rate, subtype="FLOAT")


def _npz(p: Path) -> None:
    with p.open("wb") as f:
        np.savez(f, taps=np.ones(3))


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda tmp: tmp / "nope.npy", r"no such file"),
    "directory": (_write("dir.npy", lambda p: p.mkdir()), r"not a file"),
    "corrupt npy": (
        _write("h.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage")),
        r"cannot read as \.npy",
    ),
    "npz as npy": (_write("h.npy", _npz), r"\.npz archive"),
    "corrupt wav": (
        _write("h.wav", lambda p: p.write_bytes(b"RIFF\x00\x01garbage" * 9)),
        r"cannot read as an audio file",
    ),
    "unknown type": (
        _write("h.xyz", lambda p: p.write_text("1 2 3")),
        r"cannot read as an audio file .*taps files are \.npy",
    ),
    "words in txt": (
        _write("h.txt", lambda p: p.write_text("1 2 abc\n")),
        r"cannot read as numbers",
    ),
    "ragged csv": (
        _write("h.csv", lambda p: p.write_text("1,2,3\n4,5\n")),
        r"cannot read as numbers",
    ),
    "empty npy": (_write("h.npy", lambda p: np.save(p, np.zeros(0))), r"holds no taps"),
    "empty rows npy": (
        _write("h.npy", lambda p: np.save(p, np.zeros((2, 0)))),
        r"holds no taps \(shape \(2, 0\)\)",
    ),
    "empty txt": (_write("h.txt", lambda p: p.write_text("")), r"holds no taps"),
    "nan": (
        _write("h.npy", lambda p: np.save(p, np.array([1.0, 2.0, np.nan]))),
        r"taps must be finite, found nan at row 0, tap 2",
    ),
    "inf in txt": (
        _write("h.txt", lambda p: p.write_text("1 2\n3 inf\n")),
        r"taps must be finite, found inf at row 1, tap 1",
    ),
    "too many rows": (
        _write("h.npy", lambda p: np.save(p, np.ones((3, 5)))),
        r"taps have 3 rows; expected 1 \(shared\) or 2 \(one per channel\)",
    ),
    "too many channels": (
        _write("h.wav", _wav(np.ones((5, 3)) * 0.1)),
        r"taps have 3 channels; expected 1 \(shared\) or 2",
    ),
    "3-D": (
        _write("h.npy", lambda p: np.save(p, np.ones((2, 1, 5)))),
        r"taps must be 1-D or 2-D .* got shape \(2, 1, 5\)",
    ),
    "4-D": (_write("h.npy", lambda p: np.save(p, np.ones((1, 1, 1, 5)))), r"1-D or 2-D"),
    "complex": (
        _write("h.npy", lambda p: np.save(p, np.ones(4, complex))),
        r"taps must be real numbers, got dtype complex128",
    ),
    "strings": (
        _write("h.npy", lambda p: np.save(p, np.array(["a", "b"]))),
        r"taps must be real numbers",
    ),
    "wav rate": (
        _write("h.wav", _wav(np.ones(4) * 0.1, rate=44_100)),
        r"impulse response is sampled at 44100 Hz, the stream at 48000 Hz",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_taps_file(tmp_path: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(InputFileError, match=message) as err:
        from_file(path, 2)
    assert err.value.path == path
    assert "\n" not in str(err.value)


# -------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("design", "cutoff", "rate", "message"),
    [
        (
            "lowpass",
            30_000.0,
            48_000,
            r"cutoff 30000 Hz must be below Nyquist \(24000 Hz at 48000 Hz\)",
        ),
        ("highpass", 24_000.0, 48_000, r"cutoff 24000 Hz must be below Nyquist"),
        (
            "bandpass",
            (1_000.0, 22_050.0),
            44_100,
            r"cutoff 22050 Hz must be below Nyquist \(22050 Hz at 44100 Hz\)",
        ),
        (
            "bandstop",
            (4_000.5, 5_000.0),
            8_000,
            r"cutoff 4000\.5 Hz must be below Nyquist \(4000 Hz",
        ),
    ],
)
def test_cutoff_at_or_above_nyquist(
    design: FirDesign, cutoff: float | tuple[float, float], rate: int, message: str
) -> None:
    cfg = FirConfig(design=design, cutoff_hz=cutoff, numtaps=31)
    with pytest.raises(ConfigError, match=message) as err:
        FirStage(cfg, StreamLayout(1, rate), index=2)
    assert err.value.key == "stages[2].cutoff_hz"
    assert str(err.value).startswith("config: stages[2].cutoff_hz: cutoff ")


@pytest.mark.parametrize("window", ["foo", "kaiser"])
def test_bad_window(window: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"window '{window}' is not a window firwin can use"
    ) as err:
        fir(design="lowpass", cutoff_hz=1_000.0, numtaps=31, window=window, index=1)
    assert err.value.key == "stages[1].window"


@pytest.mark.parametrize("design", ["highpass", "bandstop"])
def test_even_numtaps_for_highpass_and_bandstop(design: str) -> None:
    # Through the validated config path it is a ConfigError with the key.
    raw = {
        "stages": [{"kind": "fir", "design": design, "cutoff_hz": CUTOFFS[design], "numtaps": 10}]
    }
    with pytest.raises(ConfigError, match=rf"a {design} needs an odd numtaps, got 10") as err:
        parse_config(raw, environ={})
    assert err.value.key is not None and err.value.key.startswith("stages[0]")

    # A config that skipped validation still gets a ConfigError, not firwin's message.
    unchecked = FirConfig.model_construct(design=design, cutoff_hz=CUTOFFS[design], numtaps=10)
    with pytest.raises(ConfigError, match=rf"a {design} needs an odd numtaps, got 10") as err:
        design_taps(unchecked, StreamLayout(1, RATE), index=4)
    assert err.value.key == "stages[4].numtaps"


def test_other_firwin_refusals_are_config_errors() -> None:
    unchecked = FirConfig.model_construct(
        design="bandpass", cutoff_hz=(5_000.0, 1_000.0), numtaps=31
    )
    with pytest.raises(ConfigError, match=r"firwin refused the design") as err:
        design_taps(unchecked, StreamLayout(1, RATE), index=3)
    assert err.value.key == "stages[3]"


# -------------------------------------------------------------------- latency


@pytest.mark.parametrize(("numtaps", "latency"), [(1, 0), (2, 0), (31, 15), (512, 255)])
def test_latency_of_linear_phase_design(numtaps: int, latency: int) -> None:
    assert fir(design="lowpass", cutoff_hz=1_000.0, numtaps=numtaps).latency == latency


@pytest.mark.parametrize(
    ("taps", "latency"),
    [
        ([1.0, 0.0, -1.0], 1),  # antisymmetric (a differentiator): linear phase
        ([0.2, 1.0, 1.0 + 1e-12, 0.2], 1),  # symmetric within 1e-9 of the peak: (4 - 1) // 2
        ([0.2, 1.0, 1.0 + 1e-6, 0.2], 2),  # not symmetric: the peak
        ([0.1, 0.3, -0.4, 1.0, -0.5, 0.2, 0.05], 3),  # an impulse response: its peak
        ([0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 1.0, 0.5], 5),
    ],
)
def test_latency_of_file_taps(tmp_path: Path, taps: list[float], latency: int) -> None:
    np.save(tmp_path / "h.npy", np.array(taps))
    stage = from_file(tmp_path / "h.npy")
    assert stage.latency == latency


def test_latency_is_where_an_impulse_peaks(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ir = 0.1 * rng.standard_normal(200)
    ir[37] = 1.0
    np.save(tmp_path / "ir.npy", ir)
    stage = from_file(tmp_path / "ir.npy")
    impulse = np.zeros((1, 300), np.float32)
    impulse[0, 0] = 1.0
    assert int(np.argmax(np.abs(one_block(stage, impulse)))) == stage.latency == 37


def test_nan_block_leaves_state_after_numtaps() -> None:
    """A NaN block spoils only outputs whose window holds it; the state then recovers."""
    stage = fir(1, design="lowpass", cutoff_hz=3_000.0, numtaps=31, block_hint=64)
    assert stage.fft_block == 66
    x = noise(1, 560, seed=9)
    poisoned = x.copy()
    poisoned[:, 200:250] = np.nan
    # One long chunk holding the NaNs, then short chunks that leave the tail of the
    # workspace beyond them: stale NaNs there would poison every later chunk.
    sizes = [200, 50] + [3] * 100 + [10]
    y = feed(stage, poisoned, sizes, RATE)
    clean = feed(
        fir(1, design="lowpass", cutoff_hz=3_000.0, numtaps=31),
        np.nan_to_num(poisoned),
        [560],
        RATE,
    )
    recovered = 250 + 30  # numtaps - 1 samples after the NaNs: a block starts there
    assert np.isnan(y[:, 200:250]).all()
    np.testing.assert_allclose(y[:, recovered:], clean[:, recovered:], rtol=1e-6, atol=1e-7)
