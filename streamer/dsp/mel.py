"""Mel filterbanks: the perceptual frequency axis of learned models' features."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["hz_to_mel", "mel_edges", "mel_filterbank", "mel_to_hz"]

F64 = npt.NDArray[np.float64]


def hz_to_mel(hz: npt.ArrayLike) -> F64:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    out: F64 = 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)
    return out


def mel_to_hz(mel: npt.ArrayLike) -> F64:
    """Inverse of `hz_to_mel`."""
    out: F64 = 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)
    return out


def mel_edges(n_mels: int, fmin: float, fmax: float) -> F64:
    """The ``n_mels + 2`` edges, Hz: filter m rises from edge m, peaks at m + 1, ends at m + 2."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))


def mel_filterbank(rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> F64:
    """Triangular filters on the mel scale, as a (bins, n_mels) matrix for ``power @ fb``.

    Parameters
    ----------
    rate : int
        Sample rate, Hz.
    n_fft : int
        FFT length; the matrix has ``n_fft // 2 + 1`` rows (rfft bins).
    n_mels : int
        Number of filters.
    fmin, fmax : float
        Lowest and highest edge, Hz (``0 <= fmin < fmax <= rate / 2``).

    Returns
    -------
    ndarray of float64, shape (n_fft // 2 + 1, n_mels)
        Each filter peaks at 1; a filter narrower than a bin spacing takes the
        nearest bin at full weight, so that no filter is empty.
    """
    if not 0 <= fmin < fmax <= rate / 2:
        raise ValueError(f"need 0 <= fmin ({fmin}) < fmax ({fmax}) <= rate/2 ({rate / 2})")
    freqs = np.arange(n_fft // 2 + 1) * (rate / n_fft)
    edges = mel_edges(n_mels, fmin, fmax)
    fb = np.zeros((freqs.size, n_mels))
    for m in range(n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (centre - lo)
        falling = (hi - freqs) / (hi - centre)
        fb[:, m] = np.clip(np.minimum(rising, falling), 0.0, None)
        if not fb[:, m].any():
            fb[int(np.argmin(np.abs(freqs - centre))), m] = 1.0
    return fb
