"""Tests of the streaming STFT and its weighted overlap-add inverse."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as sp_signal

from streamer.dsp import StreamingISTFT, StreamingSTFT, frames, istft, wola_window
from tests.helpers.signals import noise, random_splits


def test_frames_matches_definition() -> None:
    x = noise(2, 1000, seed=1).astype(np.float64)
    z = frames(x, 64, 16)
    w = sp_signal.get_window("hann", 64)
    assert z.shape == (2, (1000 - 64) // 16 + 1, 33)
    for k in (0, 7, z.shape[1] - 1):
        np.testing.assert_allclose(z[:, k], np.fft.rfft(w * x[:, k * 16 : k * 16 + 64]), atol=1e-12)


def test_frames_matches_scipy_short_time_fft() -> None:
    n, hop = 128, 32
    x = noise(1, 4000, seed=2)[0].astype(np.float64)
    w = sp_signal.get_window("hann", n)
    sft = sp_signal.ShortTimeFFT(w, hop, fs=1, mfft=n, fft_mode="onesided", phase_shift=None)
    ref = sft.stft(x)
    # ShortTimeFFT centres frame p at p * hop: our frame k is its p = k + n / (2 hop).
    first = n // 2 // hop - sft.p_min
    ours = frames(x, n, hop)
    np.testing.assert_allclose(ours, ref[:, first : first + ours.shape[0]].T, atol=1e-10)


def test_short_signal_has_no_frames() -> None:
    assert frames(np.zeros((3, 10)), 16, 4).shape == (3, 0, 9)
    assert frames(np.zeros(16), 16, 4).shape == (1, 9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "hop"), [(64, 16), (100, 33), (16, 16), (8, 1)])
def test_streaming_stft_block_split_invariance(seed: int, n: int, hop: int) -> None:
    x = noise(2, 3000, seed=seed)
    rng = np.random.default_rng(seed)
    stft = StreamingSTFT(n, hop, 2)
    parts, start = [], 0
    for size in random_splits(x.shape[1], rng, max_block=3 * n):
        out = stft.process(x[:, start : start + size])
        assert out.shape[0] == 2 and out.shape[2] == n // 2 + 1
        parts.append(out)
        start += size
    got = np.concatenate(parts, axis=1)
    want = frames(x, n, hop)
    assert stft.next_frame == want.shape[1]
    np.testing.assert_array_equal(got, want)


def test_streaming_stft_raw_frames_and_reset() -> None:
    x = noise(1, 500, seed=3)
    stft = StreamingSTFT(32, 8, 1, window="boxcar")
    spec, raw = stft.process_frames(x)
    np.testing.assert_array_equal(raw[0, 5], x[0, 40:72])
    np.testing.assert_allclose(spec[0, 5], np.fft.rfft(x[0, 40:72]), rtol=1e-6, atol=1e-6)
    stft.reset()
    assert stft.next_frame == 0
    np.testing.assert_array_equal(stft.process(x), spec)


@pytest.mark.parametrize(("n", "hop"), [(256, 64), (512, 128), (64, 32)])
def test_istft_perfect_reconstruction(n: int, hop: int) -> None:
    x = noise(2, 20_000, seed=4).astype(np.float64)
    w = wola_window(n, hop)
    y = istft(frames(x, n, hop, w), n, hop, w)
    assert y.shape == (2, ((x.shape[1] - n) // hop + 1) * hop)
    np.testing.assert_allclose(y[:, n - hop :], x[:, n - hop : y.shape[1]], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_streaming_istft_block_split_invariance(seed: int) -> None:
    n, hop = 128, 32
    x = noise(1, 5000, seed=seed).astype(np.float64)
    w = wola_window(n, hop)
    z = frames(x, n, hop, w)
    rng = np.random.default_rng(seed)
    inv = StreamingISTFT(n, hop, 1, w)
    parts, start = [], 0
    for size in random_splits(z.shape[1], rng, max_block=20):
        parts.append(inv.process(z[:, start : start + size]))
        start += size
    got = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(got, istft(z, n, hop, w), atol=1e-12)
    np.testing.assert_allclose(got[:, n - hop :], x[:, n - hop : got.shape[1]], atol=1e-6)
    inv.reset()
    np.testing.assert_allclose(inv.process(z), got, atol=1e-12)


def test_stft_then_istft_streaming_chain() -> None:
    n, hop = 256, 64
    x = noise(1, 8000, seed=9)
    w = wola_window(n, hop)
    stft, inv = StreamingSTFT(n, hop, 1, w), StreamingISTFT(n, hop, 1, w)
    out = np.concatenate(
        [inv.process(stft.process(x[:, i : i + 300])) for i in range(0, 8000, 300)], axis=1
    )
    np.testing.assert_allclose(out[:, n - hop :], x[:, n - hop : out.shape[1]], atol=1e-6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"hop=20 must be between 1 and the frame length 16"):
        StreamingSTFT(16, 20, 1)
    with pytest.raises(ValueError, match=r"channels=0 must be >= 1"):
        StreamingSTFT(16, 4, 0)
    with pytest.raises(ValueError, match=r"window has shape \(3,\), expected \(16,\)"):
        StreamingSTFT(16, 4, 1, window=np.ones(3))
    with pytest.raises(ValueError, match=r"expected shape \(2, samples\)"):
        StreamingSTFT(16, 4, 2).process(np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"do not overlap-add to a constant at hop 5"):
        StreamingISTFT(16, 5, 1, "hann")
