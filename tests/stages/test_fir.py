"""The FIR stage and its kernels against lfilter, oaconvolve and np.convolve, on any block split."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal as sp_signal
import soundfile as sf

from streamer.block import Block, StreamLayout
from streamer.config import FirConfig, FirDesign, load_config, parse_config
from streamer.errors import BackendUnavailableError, BlockLayoutError, ConfigError, InputFileError
from streamer.stages import build_stages, convolution, convolution_jit
from streamer.stages.convolution import (
    Algorithm,
    FftLibrary,
    Kernel,
    Level,
    OverlapSaveConvolver,
    PartitionedConvolver,
    Plan,
    Precision,
    choose_plan,
    make_convolver,
    partition_size,
)
from streamer.stages.fir import FirStage, design_taps, fft_size_for, load_taps

from ..helpers.alloc import peak_extra_bytes
from ..helpers.offline import replay_wav
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
    stage = fir(
        1, design="lowpass", cutoff_hz=3_000.0, numtaps=31, block_hint=64,
        algorithm="overlap-save",
    )  # fmt: skip
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


# ----------------------------------------------------------------- algorithms

ALGORITHMS: list[Algorithm] = ["overlap-save", "partitioned", "nonuniform"]
TAP_LAYOUTS = [(1, 1), (3, 1), (2, 2)]  # (channels, filter rows): mono, shared, per-channel
# Every algorithm, the partitioned ones with both per-block paths (overlap-save has one).
KERNEL_CASES = [
    ("overlap-save", "auto"),
    ("partitioned", "numba"),
    ("partitioned", "numpy"),
    ("nonuniform", "numba"),
    ("nonuniform", "numpy"),
]


def random_taps(rows: int, numtaps: int, rng: np.random.Generator) -> F64:
    """Random taps with a decaying envelope, like a measured impulse response."""
    decay = np.exp(-np.arange(numtaps) / max(numtaps / 3, 1.0))
    return rng.standard_normal((rows, numtaps)) * decay


def forced(
    tmp_path: Path, taps: F64, channels: int, algorithm: Algorithm, block_hint: int, **cfg: Any
) -> FirStage:
    path = tmp_path / "taps.npy"
    np.save(path, taps)
    return FirStage(
        FirConfig(taps_file=path, algorithm=algorithm, **cfg),
        StreamLayout(channels, RATE),
        block_hint=block_hint,
    )


@pytest.mark.parametrize(("channels", "rows"), TAP_LAYOUTS, ids=["mono", "shared", "per-channel"])
@pytest.mark.parametrize("numtaps", [1, 2, 31, 257, 4096])
@pytest.mark.parametrize(("algorithm", "kernel"), KERNEL_CASES)
def test_every_algorithm_matches_lfilter(
    tmp_path: Path, algorithm: Algorithm, kernel: str, numtaps: int, channels: int, rows: int
) -> None:
    rng = np.random.default_rng([numtaps, channels, rows, ALGORITHMS.index(algorithm)])
    taps = random_taps(rows, numtaps, rng)
    # Block hints that are and are not powers of two; none too small for a long filter
    # (overlap-save with 1-frame chunks of a 4096-tap filter is correct but slow).
    hints = [1, 3, 16, 100] if numtaps <= 257 else [16, 100, 256]
    block_hint = int(rng.choice(hints))
    stage = forced(tmp_path, taps, channels, algorithm, block_hint, kernel=kernel)
    assert stage.algorithm == algorithm
    frames = 2 * numtaps + int(rng.integers(500, 3_000))
    x = noise(channels, frames, seed=numtaps)
    # Blocks of 0 and 1 frames, not multiples of the partition, longer than any FFT.
    y = feed(stage, x, random_splits(frames, rng, stage.nfft + 37), RATE)
    assert_close_to_peak(y, lfilter_ref(taps, x), 1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_matches_lfilter_long_filter(tmp_path: Path, algorithm: Algorithm) -> None:
    rng = np.random.default_rng(20_000)
    taps = random_taps(2, 20_000, rng)
    stage = forced(tmp_path, taps, 2, algorithm, 64)
    assert stage.algorithm == algorithm
    x = signal(2, 50_000, seed=4)
    y = feed(stage, x, random_splits(x.shape[1], rng, 3_000), RATE)
    assert_close_to_peak(y, lfilter_ref(taps, x), 1e-5)


def nonuniform_plan(sizes_counts: list[tuple[int, int]]) -> Plan:
    """A plan with these (size, count) levels, each starting where the previous ends."""
    levels, covered = [], 0
    for size, count in sizes_counts:
        levels.append(Level(size, count, covered))
        covered += size * count
    nfft = 2 * max(size for size, _ in sizes_counts)
    return Plan("nonuniform", nfft, sizes_counts[0][0], tuple(levels), 0.0)


@pytest.mark.parametrize(
    "levels",
    [
        [(16, 4), (64, 3), (256, 3), (1_024, 3), (4_096, 4)],  # ratio 4, four tail levels
        [(32, 2), (64, 1), (128, 7), (1_024, 15)],  # ratios 2, 2, 8
        [(100, 8), (800, 7), (6_400, 3)],  # a partition that is not a power of two
    ],
    ids=str,
)
@pytest.mark.parametrize("kernel", ["numba", "numpy"])
def test_nonuniform_levels_match_lfilter(levels: list[tuple[int, int]], kernel: Kernel) -> None:
    """Many levels, blocks that straddle every boundary, per-channel taps."""
    rng = np.random.default_rng(len(levels))
    plan = nonuniform_plan(levels)
    numtaps = sum(size * count for size, count in levels) - int(rng.integers(0, levels[-1][0]))
    taps = random_taps(2, numtaps, rng)
    conv = PartitionedConvolver(taps, plan, 1, 2, kernel=kernel)
    x = noise(2, numtaps + 9_000, seed=len(levels))
    y = np.empty_like(x)
    start = 0
    for n in random_splits(x.shape[1], rng, 2 * levels[0][0] + 3):
        conv.process(x[np.newaxis, :, start : start + n], y[np.newaxis, :, start : start + n])
        start += n
    assert_close_to_peak(y, lfilter_ref(taps, x), 1e-5)


@pytest.mark.parametrize(("algorithm", "kernel"), KERNEL_CASES)
def test_float32_precision_within_tolerance(
    tmp_path: Path, algorithm: Algorithm, kernel: str
) -> None:
    rng = np.random.default_rng(32)
    taps = random_taps(2, 3_000, rng)
    stage = forced(tmp_path, taps, 2, algorithm, 64, precision="float32", kernel=kernel)
    x = signal(2, 9_000, seed=32)
    y = feed(stage, x, random_splits(x.shape[1], rng, stage.nfft + 5), RATE)
    assert_close_to_peak(y, lfilter_ref(taps, x), 1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fft_workers_give_the_same_output(tmp_path: Path, algorithm: Algorithm) -> None:
    # 8 channels x 2 x 8192 frames: large enough that scipy.fft gets the workers.
    rng = np.random.default_rng(8)
    taps = random_taps(1, 9_000, rng)
    x = noise(8, 20_000, seed=8)
    sizes = random_splits(x.shape[1], rng, 9_000)
    one = feed(forced(tmp_path, taps, 8, algorithm, 8192), x, sizes, RATE)
    two = feed(forced(tmp_path, taps, 8, algorithm, 8192, fft_workers=2), x, sizes, RATE)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6 * float(np.max(np.abs(one))))


@pytest.mark.parametrize(("algorithm", "kernel"), KERNEL_CASES)
def test_every_algorithm_reset_and_empty_block(
    tmp_path: Path, algorithm: Algorithm, kernel: str
) -> None:
    rng = np.random.default_rng(3)
    taps = random_taps(2, 700, rng)
    x = noise(2, 2_000, seed=3)
    fresh = feed(forced(tmp_path, taps, 2, algorithm, 64, kernel=kernel), x, [2_000], RATE)

    used = forced(tmp_path, taps, 2, algorithm, 64, kernel=kernel)
    feed(used, noise(2, 1_234, seed=4), [1_000, 234], RATE)
    used.reset()
    empty = Block(np.zeros((2, 0), np.float32), "s", seq=0, t0=0, rate=RATE, captured_ns=0)
    out = used.process(empty)
    assert out.samples.shape == (2, 0) and out.samples.dtype == np.float32
    # An empty block between partial partitions leaves the state as it was.
    a = feed(used, x[:, :37], [37], RATE)
    assert used.process(empty).samples.shape == (2, 0)
    b = feed(used, x[:, 37:], [1_963], RATE)
    np.testing.assert_array_equal(np.hstack([a, b]), fresh)


@pytest.mark.parametrize(("algorithm", "kernel"), KERNEL_CASES)
def test_every_algorithm_nan_leaves_the_state(
    tmp_path: Path, algorithm: Algorithm, kernel: str
) -> None:
    rng = np.random.default_rng(6)
    taps = random_taps(1, 300, rng)
    x = noise(1, 6_000, seed=6)
    poisoned = x.copy()
    poisoned[:, 1_000:1_010] = np.nan
    sizes = random_splits(x.shape[1], rng, 300)
    stage = forced(tmp_path, taps, 1, algorithm, 32, kernel=kernel)
    y = feed(stage, poisoned, sizes, RATE)
    clean = lfilter_ref(taps, np.nan_to_num(poisoned))
    assert np.isnan(y[:, 1_000:1_010]).all()
    # Exact up to the block holding the first NaN (its FFTs mix it into all its outputs)
    # and again once the NaNs have left every window and delay line.
    ends = np.cumsum(sizes)
    before = int(ends[ends <= 1_000].max(initial=0))
    assert_close_to_peak(y[:, :before], clean[:, :before], 1e-5)
    recovered = 1_010 + stage.numtaps + stage.nfft
    assert_close_to_peak(y[:, recovered:], clean[:, recovered:], 1e-5)


# ---------------------------------------------------------- batch and kernels


@pytest.mark.parametrize(("algorithm", "kernel"), KERNEL_CASES)
@pytest.mark.parametrize("rows", [1, 2], ids=["shared", "per-channel"])
def test_batch_equals_loop(algorithm: Algorithm, kernel: Kernel, rows: int) -> None:
    rng = np.random.default_rng([7, rows])
    taps = random_taps(rows, 1_500, rng)
    streams, channels, frames = 3, 2, 5_000
    x = rng.standard_normal((streams, channels, frames)).astype(np.float32)
    batch = make_convolver(
        taps, streams=streams, channels=channels, block=128, algorithm=algorithm, kernel=kernel
    )
    loop = [
        make_convolver(taps, channels=channels, block=128, algorithm=algorithm, kernel=kernel)
        for _ in range(streams)
    ]
    y_batch = np.empty_like(x)
    y_loop = np.empty_like(x)
    start = 0
    for n in random_splits(frames, rng, 700):
        batch.process(x[..., start : start + n], y_batch[..., start : start + n])
        for s, conv in enumerate(loop):
            conv.process(
                x[s : s + 1, :, start : start + n], y_loop[s : s + 1, :, start : start + n]
            )
        start += n
    np.testing.assert_allclose(y_batch, y_loop, rtol=0, atol=1e-6 * float(np.max(np.abs(y_loop))))
    for s in range(streams):
        assert_close_to_peak(y_batch[s], lfilter_ref(taps, x[s]), 1e-5)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float64, np.float64)], ids=str)
def test_numba_kernel_equals_the_numpy_kernel(
    precision: Precision, dtypes: tuple[Any, Any]
) -> None:
    """Both per-block paths (the compiled one with FFTW's and with DUCC0's transforms),
    batched, per-channel taps, strided input, any block split."""
    rng = np.random.default_rng([11, len(precision), len(str(dtypes))])
    taps = random_taps(3, 5_000, rng)
    plan = nonuniform_plan([(64, 4), (256, 3), (1_024, 4)])
    wide = rng.standard_normal((2, 3, 2 * 9_000)).astype(dtypes[0])
    x = wide[..., ::2]  # not contiguous: the kernels must not assume it
    outs = {}
    fftw: FftLibrary = "pyfftw" if importlib.util.find_spec("pyfftw") is not None else "auto"
    paths: list[tuple[Kernel, FftLibrary]] = [
        ("numba", fftw), ("numba", "scipy"), ("numpy", "auto")
    ]
    for kernel, library in paths:
        conv = PartitionedConvolver(
            taps, plan, 2, 3, precision=precision, kernel=kernel, fft_library=library
        )
        assert conv.kernel == kernel
        if kernel == "numba":  # 6 rows: FFTW only when asked for by name
            assert bool(conv._fftw[1]) == (library == "pyfftw")
        y = np.zeros(x.shape, dtypes[1])
        start = 0
        for n in random_splits(x.shape[-1], np.random.default_rng(5), 600):
            conv.process(x[..., start : start + n], y[..., start : start + n])
            start += n
        outs[kernel, library] = y
    # The same arithmetic; the FFT libraries differ in rounding (float32: ~1e-7).
    rel = 1e-12 if precision == "float64" and dtypes[1] is np.float64 else 1e-5
    reference = outs["numpy", "auto"].astype(np.float64)
    for kernel, library in paths[:2]:
        assert_close_to_peak(outs[kernel, library], reference, rel)
        for s in range(2):
            assert_close_to_peak(outs[kernel, library][s], lfilter_ref(taps, x[s]), 1e-5)


def test_a_built_stage_compiles_nothing_at_its_first_level_boundary() -> None:
    """In a fresh process, building a stage with levels compiles (or loads) the level
    kernel too, so no boundary in the stream waits for it."""
    code = (
        "import numpy as np\n"
        "from streamer.stages import convolution_jit as jit\n"
        "from streamer.stages.convolution import make_convolver\n"
        "conv = make_convolver(np.ones(20_000) / 2e4, channels=1, block=64, kernel='numba')\n"
        "assert conv.plan.algorithm == 'nonuniform', conv.plan\n"
        "print(len(jit.level_chunk.signatures), len(jit.head_run.signatures))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.split() == ["1", "1"], done.stdout + done.stderr


@pytest.mark.parametrize(("rows", "library", "on_fftw"), [
    (1, "auto", True), (8, "auto", False), (8, "pyfftw", True), (1, "scipy", False),
])  # fmt: skip
def test_the_compiled_path_takes_fftw_for_one_row_and_ducc0_for_several(
    rows: int, library: FftLibrary, on_fftw: bool
) -> None:
    """DUCC0 vectorises across rows, FFTW's estimated plans loop over them."""
    pytest.importorskip("pyfftw")
    taps = random_taps(1, 5_000, np.random.default_rng(13))
    plan = nonuniform_plan([(256, 4), (1_024, 4)])
    conv = PartitionedConvolver(taps, plan, 1, rows, kernel="numba", fft_library=library)
    assert bool(conv._fftw[1]) == on_fftw
    assert bool(conv._levels[0]._fftw_plans.addresses[1]) == on_fftw


@pytest.mark.parametrize("library", ["pyfftw", "scipy"], ids=["fftw", "ducc0"])
def test_fft_workers_thread_the_compiled_levels_large_transforms(library: FftLibrary) -> None:
    """``workers`` reaches the compiled path's level transforms where they pay (>= 2 rows,
    >= 2^17 values: FFTW's threaded plans, or DUCC0's threads) and changes no output."""
    if library == "pyfftw":
        pytest.importorskip("pyfftw")
    rng = np.random.default_rng(12)
    taps = random_taps(1, 20_000, rng)
    plan = nonuniform_plan([(256, 16), (4_096, 1), (8_192, 2)])  # 2Q x 8 rows >= 2^17
    x = rng.standard_normal((1, 8, 40_000)).astype(np.float32)
    outs = []
    for workers in (1, 2):
        conv = PartitionedConvolver(taps, plan, 1, 8, kernel="numba", workers=workers,
                                    fft_library=library)  # fmt: skip
        on_fftw = bool(conv._levels[1]._fftw_plans.addresses[1])
        threaded = not on_fftw or convolution_jit.fftw_threads_library(np.float64) is not None
        assert [level.threads for level in conv._levels] == [1, workers if threaded else 1]
        y = np.zeros_like(x)
        start = 0
        for n in random_splits(x.shape[-1], np.random.default_rng(5), 9_000):
            conv.process(x[..., start : start + n], y[..., start : start + n])
            start += n
        outs.append(y)
    assert_close_to_peak(outs[1], outs[0].astype(np.float64), 1e-12)
    assert_close_to_peak(outs[1][0], lfilter_ref(taps, x[0]), 1e-5)


def hide_module(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    """Make the kernels' optional imports of ``hidden`` fail, as if it were not installed."""
    real_import = convolution.importlib.import_module

    def without(name: str, package: str | None = None) -> Any:
        if name == hidden:
            raise ImportError(f"No module named {hidden!r}")
        return real_import(name, package)

    monkeypatch.setattr(convolution.importlib, "import_module", without)


def test_numba_asked_for_and_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, "streamer.stages.convolution_jit")
    cfg = FirConfig(design="lowpass", cutoff_hz=1000.0, numtaps=2_001, kernel="numba")
    with pytest.raises(BackendUnavailableError, match=r"stages\[0\]: kernel 'numba'.*rocket-fft"):
        FirStage(cfg, StreamLayout(1, RATE), block_hint=64)
    auto = FirStage(cfg.model_copy(update={"kernel": "auto"}), StreamLayout(1, RATE), block_hint=64)
    assert auto.algorithm != "overlap-save" and auto._convolver.kernel == "numpy"  # type: ignore[attr-defined]


def test_make_convolver_example() -> None:
    conv = make_convolver(np.ones(3) / 3, streams=2, channels=1, block=4)
    x = np.ones((2, 1, 4), np.float32)
    y = np.empty_like(x)
    conv.process(x, y)
    np.testing.assert_allclose(y[:, 0], [[1 / 3, 2 / 3, 1, 1]] * 2, rtol=1e-6)


def test_kernels_refuse_bad_taps_and_plans() -> None:
    with pytest.raises(ValueError, match=r"taps must have shape \(1, M\) or \(2, M\)"):
        make_convolver(np.ones((3, 4)), channels=2)
    plan = choose_plan(100, 16, algorithm="nonuniform")
    with pytest.raises(ValueError, match=r"plan is 'nonuniform', not 'overlap-save'"):
        OverlapSaveConvolver(np.ones((1, 100)), plan, 1, 1)
    with pytest.raises(ValueError, match=r"levels cover .* taps, the filter has 5000"):
        PartitionedConvolver(np.ones((1, 5_000)), plan, 1, 1)
    with pytest.raises(ValueError, match=r"unknown precision='float16'"):
        make_convolver(np.ones(4), precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rows=0 must be >= 1"):
        choose_plan(4, 4, rows=0)


@pytest.mark.parametrize(
    ("algorithm", "numtaps", "kernel"),
    [
        ("overlap-save", 31, "auto"),
        ("partitioned", 200, "numpy"),
        ("partitioned", 1_000, "numpy"),
        ("partitioned", 1_000, "numba"),
        ("nonuniform", 20_000, "numba"),
    ],
)
def test_hot_path_allocates_only_the_output(
    algorithm: Algorithm, numtaps: int, kernel: Kernel
) -> None:
    """With numpy.fft out= for small transforms, a block allocates its output and views only.

    Mono, where every ufunc runs unbuffered; with several channels numpy's iterator may
    add short-lived buffers of its own for strided or broadcast operands (docs/fir.md).
    The compiled kernels are checked in their LLVM IR (tracemalloc does not see numba's
    allocator): no call that allocates, only those that borrow the argument arrays.
    """
    if not convolution._NUMPY_HAS_OUT:
        pytest.skip("numpy < 2.0 has no out= in numpy.fft")
    cfg = FirConfig(
        design="lowpass", cutoff_hz=3_000.0, numtaps=numtaps, algorithm=algorithm, kernel=kernel
    )
    stage = FirStage(cfg, StreamLayout(1, RATE), block_hint=256)
    assert stage.algorithm == algorithm
    if kernel != "numba":
        assert stage.nfft <= convolution._NUMPY_FFT_MAX
    rng = np.random.default_rng(9)
    blocks = [
        Block(rng.standard_normal((1, 256)).astype(np.float32), "s", k, 256 * k, RATE, 0)
        for k in range(30)
    ]
    # The 1 KiB output, the new Block and ~2 KiB of array views; one spectrum and one
    # transform result allocated per block would add 8 KiB.
    assert max(peak_extra_bytes(stage, blocks)) < 4 * 1_024
    if kernel == "numba":
        assert_compiled_kernels_do_not_allocate()


def assert_compiled_kernels_do_not_allocate() -> None:
    """No call in the compiled kernels' LLVM IR allocates; they only borrow their arguments."""
    import numba

    from streamer.stages import convolution_jit

    # The service's signatures: float32 blocks (head_run), the float64 ring (level_chunk).
    block_type = numba.typeof(np.zeros((1, 1, 1), np.float32))
    ring_type = numba.typeof(np.zeros((1, 1, 1), np.float64))
    for kernel_fn, first in ((convolution_jit.head_run, block_type),
                             (convolution_jit.level_chunk, ring_type)):  # fmt: skip
        signature = next((sig for sig in kernel_fn.signatures if sig[0] == first), None)
        if signature is None:
            continue  # no level: level_chunk never ran
        # Cached code cannot be inspected: compile an uncached copy.
        fresh = numba.njit(nogil=True, error_model="numpy")(kernel_fn.py_func)
        fresh.compile(signature)
        calls = set(re.findall(r"@\"?(NRT_\w+)", fresh.inspect_llvm(signature)))
        assert "NRT_adapt_ndarray_from_python" in calls  # the IR is the one we mean
        assert not {c for c in calls if "alloc" in c.lower() or c.startswith("NRT_MemInfo_new")}


@pytest.mark.parametrize("path", ["gufunc", "numpy.fft", "scipy.fft"])
def test_fft_paths_agree(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """numpy's private gufuncs, the public numpy.fft and scipy.fft give the same output."""
    if path != "gufunc":
        monkeypatch.setattr(convolution, "_GUFUNCS", None)
    if path == "scipy.fft":
        monkeypatch.setattr(convolution, "_NUMPY_HAS_OUT", False)
    rng = np.random.default_rng(10)
    taps = random_taps(2, 1_000, rng)
    x = rng.standard_normal((1, 2, 4_000)).astype(np.float32)
    for algorithm in ALGORITHMS:
        conv = make_convolver(taps, block=100, algorithm=algorithm)
        y = np.empty_like(x)
        start = 0
        for n in random_splits(x.shape[-1], rng, 300):
            conv.process(x[..., start : start + n], y[..., start : start + n])
            start += n
        assert_close_to_peak(y[0], lfilter_ref(taps, x[0]), 1e-5)


# ---------------------------------------------------------------- cost model


@pytest.mark.parametrize(
    ("numtaps", "block", "channels", "algorithm"),
    [
        (65_536, 64, 1, "nonuniform"),
        (65_536, 256, 1, "nonuniform"),
        (65_536, 256, 8, "nonuniform"),
        (262_144, 1_024, 1, "nonuniform"),
        (31, 4_096, 8, "overlap-save"),
        (31, 64, 1, "partitioned"),  # overlap-save with the numpy head: its calls cost more
        (255, 1_024, 2, "partitioned"),
        (1_024, 256, 1, "partitioned"),
    ],
)
def test_cost_model_decisions(numtaps: int, block: int, channels: int, algorithm: str) -> None:
    # Priced as the stage will run: the compiled head, FFTW where it is installed.
    head, fftw = convolution._transform_paths("auto", "auto", "float64")
    plan = choose_plan(numtaps, block, channels, head=head, fftw=fftw)
    assert plan.algorithm == algorithm, plan
    stage = fir(channels, design="lowpass", cutoff_hz=1_000.0, numtaps=numtaps, block_hint=block)
    assert (stage.algorithm, stage.nfft, stage.fft_block) == (
        algorithm,
        plan.nfft,
        plan.fft_block,
    )


@pytest.mark.parametrize("numtaps", [1, 100, 4_097, 65_536, 300_000])
@pytest.mark.parametrize("block", [1, 64, 100, 4_096])
def test_plans_cover_the_filter(numtaps: int, block: int) -> None:
    for algorithm in ALGORITHMS:
        plan = choose_plan(numtaps, block, 1, algorithm)
        assert plan.algorithm == algorithm
        if algorithm == "overlap-save":
            assert plan.levels == () and plan.nfft - numtaps + 1 >= block
            continue
        head, *rest = plan.levels
        assert head.offset == 0 and head.size == partition_size(block) >= block
        covered = head.size * head.count
        for level in rest:  # each level starts at its own size, where the previous ends
            assert level.offset == level.size == covered
            covered += level.size * level.count
        assert covered >= numtaps
        assert covered - numtaps < plan.levels[-1].size  # no wholly empty partition
        assert plan.nfft == 2 * max(level.size for level in plan.levels)


@pytest.mark.parametrize(("block", "size"), [(1, 1), (7, 8), (64, 64), (100, 100), (1000, 1000)])
def test_partition_size(block: int, size: int) -> None:
    assert partition_size(block) == size


# ---------------------------------------------------------------- config fields


def test_algorithm_config_fields() -> None:
    cfg = FirConfig()
    assert (cfg.algorithm, cfg.fft_workers, cfg.precision) == ("auto", 1, "float64")
    raw = {"stages": [{"kind": "fir", "algorithm": "nonuniform", "precision": "float32"}]}
    stage_cfg = parse_config(raw, environ={}).stages[0]
    assert (stage_cfg.algorithm, stage_cfg.precision) == ("nonuniform", "float32")
    for bad in ({"algorithm": "fast"}, {"fft_workers": 0}, {"precision": "float16"}):
        with pytest.raises(ConfigError) as err:
            parse_config({"stages": [{"kind": "fir", **bad}]}, environ={})
        assert err.value.key is not None and err.value.key.startswith("stages[0]")


def load_tool(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``tools/NAME.py`` imported as a module."""
    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, tool)  # dataclasses look it up
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize(
    ("tool", "argv", "printed", "header"),
    [
        ("bench_fir", ["--blocks", "64", "100", "--channels", "2", "--seconds", "0.05",
                       "--no-gnuradio"], "GNU Radio: not found", "taps,block,channels,algorithm"),
        ("check_cost_model", ["--blocks", "64", "4096", "--channels", "1", "--seconds", "0.2"],
         "pick vs fastest over 2 configurations", "taps,block,channels,pick,fastest"),
    ],
)  # fmt: skip
def test_fir_tool_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tool: str, argv: list[str], printed: str, header: str,
) -> None:
    """tools/bench_fir.py and tools/check_cost_model.py on a tiny grid: a row per
    configuration, and the CSV."""
    module = load_tool(tool, monkeypatch)
    csv_path = tmp_path / "rows.csv"
    assert module.main(["--taps", "31", "--repeats", "1", *argv, "--csv", str(csv_path)]) == 0
    assert printed in capsys.readouterr().out
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith(header)


def test_first_blocks_tool_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/first_blocks.py on the long-FIR example: the build, the blocks, the slowest."""
    tool = load_tool("first_blocks", monkeypatch)
    config = Path(__file__).resolve().parents[2] / "config" / "long-fir.toml"
    assert tool.main([str(config), "--block", "64", "--rate", "8000"]) == 0
    out = capsys.readouterr().out
    assert "125 blocks of 64 at 8000 Hz" in out and "slowest block:" in out


def test_torch_chain_bench_tool_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/bench_torch_chain.py on a tiny chain: a row per block size (it checks that
    handing tensors on leaves the output as it was)."""
    bench = load_tool("bench_torch_chain", monkeypatch)
    argv = ["--stages", "2", "--taps", "64", "--blocks", "32", "100", "--seconds", "0.05"]
    assert bench.main([*argv, "--repeats", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split()[0] for row in rows] == ["32", "100"]


def test_long_fir_example_config() -> None:
    """config/long-fir.toml loads and builds the plan its comments describe."""
    path = Path(__file__).resolve().parents[2] / "config" / "long-fir.toml"
    cfg = load_config(path, environ={})
    (stage_cfg,) = cfg.stages
    stage = FirStage(stage_cfg, StreamLayout(1, RATE), block_hint=cfg.pipeline.block)
    assert stage.algorithm == "nonuniform"
    if importlib.util.find_spec("pyfftw") is not None:  # as the comments say: with FFTW
        assert [level.size for level in stage.plan.levels] == [64, 2_048, 8_192]
    assert stage.latency == 32_767


# ---------------------------------------------------------- the torch backend


@pytest.mark.parametrize(("channels", "rows"), TAP_LAYOUTS, ids=["mono", "shared", "per-channel"])
@pytest.mark.parametrize("numtaps", [1, 31, 257, 4096])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_torch_backend_matches_lfilter(
    tmp_path: Path, numtaps: int, channels: int, rows: int, precision: str
) -> None:
    rng = np.random.default_rng([numtaps, channels, rows, len(precision)])
    taps = random_taps(rows, numtaps, rng)
    block_hint = int(rng.choice([1, 3, 16, 100] if numtaps <= 257 else [16, 100, 256]))
    stage = forced(tmp_path, taps, channels, "partitioned", block_hint, backend="torch",
                   precision=precision)
    assert stage.algorithm == "partitioned"
    frames = 2 * numtaps + int(rng.integers(500, 3_000))
    x = noise(channels, frames, seed=numtaps)
    y = feed(stage, x, random_splits(frames, rng, stage.nfft + 37), RATE)
    assert_close_to_peak(y, lfilter_ref(taps, x), 1e-5)
    stage.reset()
    assert_close_to_peak(feed(stage, x, [frames], RATE), y, 1e-6)


def test_torch_backend_batch_equals_the_numpy_kernels() -> None:
    rng = np.random.default_rng(8)
    taps = random_taps(2, 3_000, rng)
    x = rng.standard_normal((4, 2, 6_000)).astype(np.float32)
    convs = [make_convolver(taps, streams=4, channels=2, block=64, algorithm="partitioned",
                            backend=b) for b in ("numpy", "torch")]
    outs = [np.empty_like(x), np.empty_like(x)]
    start = 0
    for n in random_splits(x.shape[-1], rng, 700):
        for conv, out in zip(convs, outs, strict=True):
            conv.process(x[..., start : start + n], out[..., start : start + n])
        start += n
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-6 * float(np.abs(outs[0]).max()))


def test_torch_process_tensor_stays_on_its_device() -> None:
    import torch

    taps = random_taps(1, 500, np.random.default_rng(9))
    conv = make_convolver(taps, channels=1, block=64, backend="torch")
    x = torch.randn(1, 1, 1000, dtype=torch.float64)
    from streamer.stages.convolution_torch import TorchPartitionedConvolver

    assert isinstance(conv, TorchPartitionedConvolver)
    y = conv.process_tensor(x)
    assert y.device == x.device and y.shape == x.shape
    assert_close_to_peak(y.numpy()[0], lfilter_ref(taps, x.numpy()[0]), 1e-9)


def test_torch_blocks_allocate_their_output_and_the_ffts_scratch_only() -> None:
    """torch's profiler sees its CPU allocator: over 20 partitions (with delay-line
    boundaries) only the output and torch's own FFT temporaries (its ``out=`` transforms
    compute into one and copy) are allocated; the MAC and the products use buffers."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    p, partitions = 64, 20
    taps = random_taps(1, 3_000, np.random.default_rng(11))
    conv = make_convolver(taps, channels=1, block=p, backend="torch")
    x = torch.randn(1, 1, p * partitions, dtype=torch.float64)
    conv.process_tensor(x)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        conv.process_tensor(x)
    allocated = {e.key: e.self_cpu_memory_usage for e in prof.key_averages()
                 if e.self_cpu_memory_usage > 0}  # fmt: skip
    assert set(allocated) <= {"aten::empty"}, allocated
    fft_scratch = (p + 1) * 16 + 2 * p * 8  # a spectrum and a signal per partition
    assert allocated.get("aten::empty", 0) <= x.numel() * 8 + partitions * fft_scratch


def torch_device_or_skip(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device(name)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("last", ["torch", "numpy"])
def test_torch_stages_hand_tensors_on_and_the_chain_ends_in_numpy(device: str, last: str) -> None:
    """Two torch FIR stages on one device pass a tensor between them, never numpy; the
    last stage of the chain, or a stage before a numpy one, returns numpy; the chain
    still equals the cascade of lfilters on any block split."""
    import torch

    on = torch_device_or_skip(device)
    designs = [("lowpass", 3_000.0, 301), ("highpass", 200.0, 1_001), ("lowpass", 5_000.0, 31)]
    configs = [
        FirConfig(design=kind, cutoff_hz=cut, numtaps=n, backend="torch", device=device)
        for kind, cut, n in designs[:2]
    ]
    kind, cut, n = designs[2]
    configs.append(FirConfig(design=kind, cutoff_hz=cut, numtaps=n, backend=last, device=(
        device if last == "torch" else "cpu")))
    assert build_stages([], StreamLayout(2, RATE), block=128) == []  # nothing to link
    stages = build_stages(configs, StreamLayout(2, RATE), block=128)
    assert [stage.hands_off_tensors for stage in stages] == [True, last == "torch", False]
    rng = np.random.default_rng(12)
    x = signal(2, 6_000, seed=12)
    outs, start = [], 0
    for seq, frames in enumerate(random_splits(x.shape[1], rng, 700)):
        block = Block(np.ascontiguousarray(x[:, start : start + frames]), "t", seq, start, RATE, 0)
        for stage in stages:
            block = stage.process(block)
            if stage.hands_off_tensors:
                assert isinstance(block.samples, torch.Tensor)
                assert block.samples.device.type == on.type
                assert block.samples.dtype == torch.float32
            else:
                assert isinstance(block.samples, np.ndarray)
        assert block.samples.dtype == np.float32 and block.samples.shape == (2, frames)
        outs.append(block.samples)
        start += frames
    ref = x
    for stage in stages:  # every stage's output is float32, as on the wire
        ref = lfilter_ref(stage.taps, ref).astype(np.float32)
    assert_close_to_peak(np.concatenate(outs, axis=1), ref.astype(np.float64), 1e-5)


def test_a_config_of_torch_stages_replays_to_the_cascade(tmp_path: Path) -> None:
    """`streamer replay` through two torch FIR stages (a tensor between them) writes the
    cascade of the two lfilters."""
    config = tmp_path / "two.toml"
    config.write_text(
        "[pipeline]\nblock = 100\n"
        '[[stages]]\nkind = "fir"\ndesign = "lowpass"\ncutoff_hz = 4000.0\nnumtaps = 513\n'
        'backend = "torch"\n'
        '[[stages]]\nkind = "fir"\ndesign = "highpass"\ncutoff_hz = 300.0\nnumtaps = 2001\n'
        'backend = "torch"\n'
    )
    x = signal(1, 20_000, seed=13)[0]
    y, rate = replay_wav(tmp_path, x, RATE, config)
    assert rate == RATE
    cfg = load_config(config, environ={})
    ref = x[np.newaxis]
    for stage_cfg in cfg.stages:
        assert isinstance(stage_cfg, FirConfig)
        ref = lfilter_ref(design_taps(stage_cfg, StreamLayout(1, RATE)), ref).astype(np.float32)
    assert_close_to_peak(y, ref[0].astype(np.float64), 1e-5)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"backend": "torch", "algorithm": "nonuniform"}, "runs the partitioned algorithm"),
        ({"device": "cuda"}, "device = 'cuda' needs backend = 'torch'"),
        ({"backend": "torch", "kernel": "numba"}, "kernel = 'numba' is the numpy backend's"),
    ],
)
def test_torch_backend_config_errors(fields: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({"stages": [{"kind": "fir", "numtaps": 31, "design": "lowpass",
                                  "cutoff_hz": 1000.0, **fields}]}, environ={})


def test_cuda_without_a_gpu_is_a_clear_start_up_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = FirConfig(design="lowpass", cutoff_hz=1000.0, numtaps=31, backend="torch", device="cuda")
    match = r"stages\[0\]: device 'cuda'.*no CUDA device"
    with pytest.raises(BackendUnavailableError, match=match):
        FirStage(cfg, StreamLayout(1, RATE))


def test_cuda_backend_matches_lfilter() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(10)
    taps = random_taps(1, 65_536, rng)
    conv = make_convolver(taps, streams=8, channels=1, block=256, backend="torch", device="cuda")
    x = rng.standard_normal((8, 1, 100_000)).astype(np.float32)
    y = np.empty_like(x)
    start = 0
    for n in random_splits(x.shape[-1], rng, 3_000):
        conv.process(x[..., start : start + n], y[..., start : start + n])
        start += n
    for s in range(8):
        assert_close_to_peak(y[s], lfilter_ref(taps, x[s]), 1e-5)


# ---------------------------------------------------------- FFT libraries


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_pyfftw_gives_the_scipy_output(
    tmp_path: Path, algorithm: Algorithm, precision: str
) -> None:
    pytest.importorskip("pyfftw")
    rng = np.random.default_rng([3, ALGORITHMS.index(algorithm), len(precision)])
    taps = random_taps(2, 9_000, rng)
    x = signal(2, 40_000, seed=5)
    sizes = random_splits(x.shape[1], rng, 20_000)
    outs = {}
    for library in ("scipy", "pyfftw"):
        stage = forced(tmp_path, taps, 2, algorithm, 256, precision=precision,
                       fft_library=library)
        outs[library] = feed(stage, x, sizes, RATE)
    assert_close_to_peak(outs["pyfftw"], lfilter_ref(taps, x), 1e-5)
    assert_close_to_peak(outs["pyfftw"], outs["scipy"], 1e-6 if precision == "float32" else 1e-12)


def test_pyfftw_asked_for_and_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, "pyfftw")
    cfg = FirConfig(design="lowpass", cutoff_hz=1000.0, numtaps=20_001, fft_library="pyfftw")
    with pytest.raises(BackendUnavailableError, match=r"stages\[0\]: .*pip install pyfftw"):
        FirStage(cfg, StreamLayout(1, RATE), block_hint=64)
    auto = FirStage(cfg.model_copy(update={"fft_library": "auto"}), StreamLayout(1, RATE))
    assert auto.numtaps == 20_001  # auto falls back to scipy.fft
