"""Tests of the synth source: exactness, determinism, levels, anomaly ground truth, pacing."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal as sp_signal

from streamer.config import SynthSourceConfig
from streamer.errors import ConfigError
from streamer.sources import SynthSource, open_source
from streamer.sources.synth import SEGMENT, anomaly_schedule

F32 = npt.NDArray[np.float32]


def synth(**kw: Any) -> SynthSource:
    """A non-paced synth source (unless ``realtime`` is given)."""
    kw.setdefault("realtime", False)
    return SynthSource(SynthSourceConfig(**kw), "test")


def render(src: SynthSource, block_size: int) -> F32:
    """The whole (finite) scene, joined from blocks of ``block_size``."""
    blocks = list(src.blocks(block_size, threading.Event()))
    return np.concatenate([b.samples for b in blocks], axis=1)


def db(x: npt.NDArray[Any]) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-30))


@pytest.mark.parametrize("noise", ["white", "pink", "brown"])
def test_block_split_invariance(noise: str) -> None:
    # 4.5 s at 8 kHz holds every anomaly window and a period boundary; 2 channels
    # exercise per-channel filter states.
    src = synth(rate=8000, channels=2, duration_s=4.5, anomaly_period_s=4.0, noise=noise)
    assert src.total_frames == 36000
    whole = render(src, 36000)
    assert whole.shape == (2, 36000) and whole.dtype == np.float32
    rng = np.random.default_rng(1)
    sizes = [3, SEGMENT - 1, SEGMENT, SEGMENT + 1, 10_007, *rng.integers(2, 9000, size=4)]
    for size in sizes:
        np.testing.assert_array_equal(render(src, int(size)), whole, err_msg=f"block {size}")


def test_one_frame_blocks_and_prefix_match_longer_scene() -> None:
    long = render(synth(rate=8000, channels=2, duration_s=4.0, anomaly_period_s=4.0), 5000)
    # duration does not change content: a short scene is a prefix of a long one
    short = synth(rate=8000, channels=2, duration_s=1.1, anomaly_period_s=4.0)
    ones = render(short, 1)
    assert ones.shape == (2, 8800)
    np.testing.assert_array_equal(ones, long[:, :8800])


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    a = render(synth(rate=8000, duration_s=1.0, seed=7), 512)
    b = render(synth(rate=8000, duration_s=1.0, seed=7), 512)
    c = render(synth(rate=8000, duration_s=1.0, seed=8), 512)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.abs(a - c)) > 1e-3


def test_channels_differ() -> None:
    x = render(synth(rate=8000, channels=3, duration_s=0.5), 1000)
    for i, j in itertools.combinations(range(3), 2):
        assert not np.array_equal(x[i], x[j])


def test_blocks_are_contiguous_fresh_and_numbered() -> None:
    src = synth(rate=8000, channels=2, duration_s=1.0)
    blocks = list(src.blocks(700, threading.Event()))
    assert [b.seq for b in blocks] == list(range(len(blocks)))
    assert [b.t0 for b in blocks] == [700 * i for i in range(len(blocks))]
    assert [b.frames for b in blocks] == [700] * 11 + [8000 - 7700]
    for prev, b in itertools.pairwise(blocks):
        assert not np.shares_memory(prev.samples, b.samples)
        assert b.captured_ns >= prev.captured_ns
    for b in blocks:
        assert b.samples.dtype == np.float32 and b.samples.flags.c_contiguous
        assert (b.stream, b.rate, b.channels) == ("test", 8000, 2)
    # a second iteration starts the scene again
    again = list(src.blocks(700, threading.Event()))
    np.testing.assert_array_equal(again[3].samples, blocks[3].samples)


def test_tone_level_is_peak_dbfs() -> None:
    x = render(
        synth(
            rate=16000,
            channels=2,
            duration_s=1.0,
            tones_hz=(1000.0,),
            tone_level_db=-20.0,
            noise_level_db=-150.0,
            hum_hz=None,
            speech_bursts=False,
            anomalies=False,
        ),
        4000,
    )
    for ch in x:
        assert 20 * np.log10(np.abs(ch).max()) == pytest.approx(-20.0, abs=1.0)
        spectrum = np.abs(np.fft.rfft(ch))
        assert np.argmax(spectrum) == 1000  # 1 Hz bins


@pytest.mark.parametrize("noise", ["white", "pink", "brown"])
def test_noise_level_is_rms_dbfs(noise: str) -> None:
    x = render(
        synth(
            rate=16000,
            channels=2,
            duration_s=2.0,
            tones_hz=(),
            noise=noise,
            noise_level_db=-30.0,
            hum_hz=None,
            speech_bursts=False,
            anomalies=False,
        ),
        4000,
    )
    for ch in x:
        assert db(ch) == pytest.approx(-30.0, abs=1.5)
    # the colour shows in the spectrum's slope: low band vs high band power per Hz
    f, pxx = sp_signal.welch(x[0].astype(np.float64), fs=16000, nperseg=4096)
    low = pxx[(f > 100) & (f < 200)].mean()
    high = pxx[(f > 3000) & (f < 6000)].mean()
    slope = 10 * np.log10(low / high)
    expected = {"white": 0.0, "pink": 10 * np.log10(30), "brown": 20 * np.log10(30)}[noise]
    assert slope == pytest.approx(expected, abs=5.0)


def test_hum_and_speech_levels() -> None:
    base: dict[str, Any] = dict(
        rate=16000, duration_s=8.0, tones_hz=(), noise_level_db=-150.0, anomalies=False
    )
    hum = render(synth(**base, speech_bursts=False, hum_hz=60.0), 16000)[0]
    assert -42.0 < db(hum) < -38.0
    spectrum = np.abs(np.fft.rfft(hum))  # 0.125 Hz bins
    assert np.argmax(spectrum) == 60 * 8
    speech = render(synth(**base, speech_bursts=True, hum_hz=None), 16000)[0]
    frames = speech[: speech.size // 320 * 320].reshape(-1, 320)  # 20 ms
    rms = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-30)
    assert -23.0 < rms.max() < -17.0  # about -20 dBFS at the syllables' peaks
    voiced = np.mean(rms > -40.0)
    assert 0.1 < voiced < 0.7  # bursts separated by pauses


def test_default_scene_stays_below_full_scale() -> None:
    x = render(synth(channels=2, duration_s=20.0, rate=16000), 1 << 15)
    assert np.abs(x).max() < 10 ** (-3 / 20)


def test_anomaly_schedule_is_visible() -> None:
    cfg = dict(rate=16000, duration_s=8.0, anomaly_period_s=4.0)
    src = synth(**cfg)
    sched = anomaly_schedule(src.cfg)
    assert [name for name, _, _ in sched] == ["whistle", "clicks", "dropout"]
    assert sched[0][2] - sched[0][1] == pytest.approx(1.0)
    assert sched[1][2] - sched[1][1] == pytest.approx(1.5)
    assert sched[2][2] - sched[2][1] == pytest.approx(0.5)
    for (_, _, end), (_, start, _) in itertools.pairwise(sched):
        assert end <= start
    assert sched[-1][2] <= 4.0
    x: npt.NDArray[np.float64] = render(src, 4096)[0].astype(np.float64)
    quiet = anomaly_schedule(synth(**cfg, anomalies=False).cfg)
    assert quiet == []

    def span(lo: float, hi: float, period: int = 0) -> npt.NDArray[np.float64]:
        return x[round((lo + 4 * period) * 16000) : round((hi + 4 * period) * 16000)]

    def band_db(sig: npt.NDArray[np.float64], lo_hz: float, hi_hz: float) -> float:
        sos = sp_signal.butter(6, (lo_hz, hi_hz), "bandpass", fs=16000, output="sos")
        out: npt.NDArray[np.float64] = sp_signal.sosfilt(sos, sig)
        return db(out[800:])  # skip the filter's start

    before = span(0.0, 0.55)
    for period in (0, 1):
        (_, w0, w1), (_, c0, c1), (_, d0, d1) = sched
        # the whistle at 3.1 kHz
        rise = band_db(span(w0, w1, period), 3000, 3200) - band_db(before, 3000, 3200)
        assert rise > 20.0
        # the click train: 18 knocks, broadband, 1/12 s apart
        clicks = sp_signal.sosfilt(
            sp_signal.butter(4, 4500, "highpass", fs=16000, output="sos"), span(c0, c1, period)
        )
        peaks, _ = sp_signal.find_peaks(np.abs(clicks), height=0.05, distance=800)
        assert len(peaks) == 18
        np.testing.assert_allclose(np.diff(peaks), 16000 / 12, atol=2)
        # the dropout: near-silence, sharp edges
        assert db(span(d0, d1, period)) < -60.0
        assert db(span(d0 - 0.1, d0, period)) > -35.0


def test_duration_and_endless() -> None:
    src = synth(rate=8000, duration_s=0.123)
    assert src.total_frames == 984
    assert [b.frames for b in src.blocks(256, threading.Event())] == [256, 256, 256, 216]
    endless = synth(rate=8000)
    assert endless.total_frames is None
    blocks = list(itertools.islice(endless.blocks(1000, threading.Event()), 50))
    assert blocks[-1].t0 == 49_000 and blocks[-1].frames == 1000


def test_stop_event_ends_iteration() -> None:
    stop = threading.Event()
    seen = []
    for block in synth(rate=8000, realtime=True).blocks(80, stop):
        seen.append(block.seq)
        if block.seq == 2:
            stop.set()
    assert seen == [0, 1, 2]


def test_stop_interrupts_pacing_promptly() -> None:
    stop = threading.Event()
    timer = threading.Timer(0.05, stop.set)
    src = synth(rate=8000, realtime=True)
    start = time.monotonic()
    timer.start()
    try:
        blocks = list(src.blocks(8000 * 5, stop))  # a 5 s block
    finally:
        timer.cancel()
    assert blocks == []
    assert time.monotonic() - start < 1.0


def test_realtime_pacing() -> None:
    src = synth(rate=8000, duration_s=0.3, realtime=True)
    assert src.live
    start_ns = time.monotonic_ns()
    blocks = list(src.blocks(240, threading.Event()))
    elapsed = (time.monotonic_ns() - start_ns) / 1e9
    assert sum(b.frames for b in blocks) == 2400
    assert 0.29 <= elapsed < 2.0
    # no block is captured before its last sample was due (the pacer starts after start_ns)
    for b in blocks:
        assert b.captured_ns - start_ns >= (b.t0 + b.frames) * 1_000_000_000 // 8000


def test_not_realtime_is_not_live() -> None:
    assert not synth().live


def test_throughput_48k_mono_beats_50x_real_time() -> None:
    src = synth(rate=48000, duration_s=3.0)
    render(src, 1024)  # warm up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        render(src, 1024)
        times.append(time.perf_counter() - t)
    assert 3.0 / min(times) > 50.0


def test_refuses_tones_above_nyquist() -> None:
    with pytest.raises(ConfigError, match=r"source\.tones_hz: tone 5000 Hz .* Nyquist .*4000"):
        synth(rate=8000, tones_hz=(5000.0,))
    with pytest.raises(ConfigError, match=r"source\.hum_hz: hum_hz=4500 .* Nyquist"):
        synth(rate=8000, tones_hz=(), hum_hz=4500.0)


def test_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_size=0 must be >= 1"):
        next(synth(rate=8000).blocks(0, threading.Event()))


def test_low_rate_scene_works() -> None:
    x = render(synth(rate=1000, duration_s=5.0, tones_hz=(100.0,), anomaly_period_s=4.0), 333)
    assert x.shape == (1, 5000) and np.all(np.isfinite(x))
    assert np.abs(x).max() < 1.0


def test_open_source_builds_synth() -> None:
    src = open_source(SynthSourceConfig(duration_s=0.01, realtime=False), "main")
    assert isinstance(src, SynthSource)
    assert src.layout.rate == 48000 and src.layout.channels == 1
    src.close()
