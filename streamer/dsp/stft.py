"""A streaming STFT and its weighted overlap-add inverse, with explicit state.

Convention: frame ``k`` covers samples ``[k * hop, k * hop + n)`` of the stream and is
``rfft(window * x[k * hop : k * hop + n])`` (no phase shift, no zero padding, no
scaling). A stream fed in blocks of any sizes yields exactly the frames `frames`
gives for the whole signal, each as soon as its last sample arrives.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft as sp_fft
import scipy.signal as sp_signal

__all__ = ["StreamingISTFT", "StreamingSTFT", "frames", "istft", "wola_window"]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
WindowSpec = str | tuple[str, float]


def _window(window: WindowSpec | npt.ArrayLike, n: int) -> F64:
    """A periodic (DFT-even) window of length ``n``, read-only."""
    if isinstance(window, str | tuple):
        w = np.asarray(sp_signal.get_window(window, n, fftbins=True), dtype=np.float64)
    else:
        w = np.asarray(window, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"window has shape {w.shape}, expected ({n},)")
    w = w.copy()
    w.setflags(write=False)
    return w


def _check(n: int, hop: int) -> None:
    if n < 1:
        raise ValueError(f"{n=} must be >= 1")
    if not 1 <= hop <= n:
        raise ValueError(f"{hop=} must be between 1 and the frame length {n}")


def wola_window(n: int, hop: int) -> F64:
    """The sqrt-Hann window scaled so that analysis x synthesis overlap-adds to 1 at ``hop``.

    Parameters
    ----------
    n : int
        Frame length, samples.
    hop : int
        Hop, samples; ``n / hop`` should be an integer >= 2 for exact reconstruction.

    Returns
    -------
    ndarray of float64, shape (n,)
        ``w`` with ``sum_k w[m + k hop]**2 == 1`` for every ``m`` (when it is constant).
    """
    _check(n, hop)
    w = np.sqrt(sp_signal.get_window("hann", n, fftbins=True))
    # The squared sqrt-Hann is Hann, which sums to n / (2 hop) over shifts of hop:
    # dividing by the root of that sum makes the squares add to 1.
    ola = np.zeros(hop)
    np.add.at(ola, np.arange(n) % hop, w * w)
    out: F64 = w / np.sqrt(ola.mean())
    out.setflags(write=False)
    return out


def frames(x: npt.ArrayLike, n: int, hop: int, window: WindowSpec | npt.ArrayLike = "hann") -> C128:
    """Whole-signal STFT: the offline twin of `StreamingSTFT`.

    Parameters
    ----------
    x : array_like, shape (channels, samples) or (samples,)
        The signal.
    n : int
        Frame length, samples.
    hop : int
        Hop between frame starts, samples (1 <= hop <= n).
    window : str, tuple or array_like, optional
        A `scipy.signal.get_window` spec (periodic) or ``n`` values. Default ``"hann"``.

    Returns
    -------
    ndarray of complex128, shape (channels, frames, n // 2 + 1) or (frames, n // 2 + 1)
        Frame ``k`` is ``rfft(window * x[..., k*hop : k*hop + n])``; ``frames`` is
        ``(samples - n) // hop + 1`` (0 when ``samples < n``).
    """
    _check(n, hop)
    w = _window(window, n)
    arr = np.asarray(x, dtype=np.float64)
    squeeze = arr.ndim == 1
    arr = np.atleast_2d(arr)
    count = 0 if arr.shape[1] < n else (arr.shape[1] - n) // hop + 1
    if count == 0:
        out: C128 = np.zeros((arr.shape[0], 0, n // 2 + 1), dtype=np.complex128)
    else:
        view = np.lib.stride_tricks.sliding_window_view(arr, n, axis=1)[:, ::hop][:, :count]
        out = sp_fft.rfft(view * w, axis=-1)
    return out[0] if squeeze else out


class StreamingSTFT:
    """An STFT fed blocks of any sizes, yielding each frame once its last sample has arrived.

    Parameters
    ----------
    n : int
        Frame length, samples.
    hop : int
        Hop between frame starts, samples (1 <= hop <= n).
    channels : int
        Channel count of the blocks.
    window : str, tuple or array_like, optional
        A `scipy.signal.get_window` spec (periodic) or ``n`` values. Default ``"hann"``.

    Attributes
    ----------
    window : ndarray of float64, shape (n,)
        Read-only.
    bins : int
        ``n // 2 + 1``.
    next_frame : int
        Index of the next frame to be produced (frames produced so far).

    Notes
    -----
    Frame ``k`` becomes available in the call that delivers sample ``k*hop + n - 1``:
    a delay of ``n`` samples from the frame's first sample, which no
    implementation can remove. State: the last ``< n`` samples not yet consumed
    by a complete frame, plus a frame counter.
    """

    def __init__(
        self, n: int, hop: int, channels: int, window: WindowSpec | npt.ArrayLike = "hann"
    ) -> None:
        _check(n, hop)
        if channels < 1:
            raise ValueError(f"{channels=} must be >= 1")
        self.n = n
        self.hop = hop
        self.channels = channels
        self.window: F64 = _window(window, n)
        self.bins = n // 2 + 1
        # Samples from the start of frame `next_frame` on; never n or more between calls.
        self._pending = np.zeros((channels, n), dtype=np.float64)
        self._fill = 0
        self.next_frame = 0

    def reset(self) -> None:
        """Forget every sample, as if just built."""
        self._fill = 0
        self.next_frame = 0

    def process(self, x: npt.ArrayLike) -> C128:
        """Feed samples; return the spectra of the frames they complete (see `process_frames`)."""
        return self.process_frames(x)[0]

    def process_frames(self, x: npt.ArrayLike) -> tuple[C128, F64]:
        """Feed samples; return the spectra and the raw samples of the frames they complete.

        Parameters
        ----------
        x : array_like, shape (channels, samples)
            The next samples of the stream (any count, 0 included).

        Returns
        -------
        spectra : ndarray of complex128, shape (channels, frames, n // 2 + 1)
            The completed frames in order; their indices are ``next_frame - frames``
            to ``next_frame - 1`` after the call.
        raw : ndarray of float64, shape (channels, frames, n)
            The same frames' samples before windowing (a read-only view).
        """
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[0] != self.channels:
            raise ValueError(f"expected shape ({self.channels}, samples), got {arr.shape}")
        n, hop, fill = self.n, self.hop, self._fill
        total = fill + arr.shape[1]
        count = 0 if total < n else (total - n) // hop + 1
        if count == 0:
            self._pending[:, fill:total] = arr
            self._fill = total
            empty = np.zeros((self.channels, 0, self.bins), dtype=np.complex128)
            return empty, np.zeros((self.channels, 0, n))
        # COPY: frames straddle the held samples and the new block, so join them once.
        joined = np.concatenate((self._pending[:, :fill], arr), axis=1, dtype=np.float64)
        view = np.lib.stride_tricks.sliding_window_view(joined, n, axis=1)[:, ::hop][:, :count]
        out: C128 = sp_fft.rfft(view * self.window, axis=-1)
        consumed = count * hop
        rest = total - consumed
        # COPY: keep the samples later frames still need (< n of them).
        self._pending[:, :rest] = joined[:, consumed:]
        self._fill = rest
        self.next_frame += count
        return out, view


def _ola_norm(analysis: F64, synthesis: F64, hop: int) -> float:
    """The constant overlap-add sum of analysis x synthesis windows; ValueError if not constant."""
    n = analysis.shape[0]
    ola = np.zeros(hop)
    np.add.at(ola, np.arange(n) % hop, analysis * synthesis)
    if ola.min() <= 0 or not np.allclose(ola, ola.mean(), rtol=1e-9, atol=0):
        raise ValueError(
            f"windows do not overlap-add to a constant at hop {hop} (sum ranges "
            f"{ola.min():.6g}..{ola.max():.6g}); choose a hop that divides the frame length"
        )
    return float(ola.mean())


def istft(
    spectra: npt.ArrayLike,
    n: int,
    hop: int,
    window: WindowSpec | npt.ArrayLike = "hann",
    synthesis: WindowSpec | npt.ArrayLike | None = None,
) -> F64:
    """Whole-signal weighted overlap-add inverse: the offline twin of `StreamingISTFT`.

    Parameters
    ----------
    spectra : array_like, shape (channels, frames, n // 2 + 1)
        Frames as `frames` makes them.
    n, hop : int
        Frame length and hop, samples.
    window : optional
        The analysis window spec. Default ``"hann"``.
    synthesis : optional
        The synthesis window spec; default the analysis window.

    Returns
    -------
    ndarray of float64, shape (channels, frames * hop)
        Sample ``m`` is exact (equals the analysed signal) for
        ``n - hop <= m < frames * hop``; earlier samples lack overlapping frames.
    """
    stream = StreamingISTFT(n, hop, np.asarray(spectra).shape[0], window, synthesis)
    return stream.process(spectra)


class StreamingISTFT:
    """Weighted overlap-add synthesis of streamed STFT frames, with perfect reconstruction.

    Parameters
    ----------
    n : int
        Frame length, samples.
    hop : int
        Hop, samples; the windows must overlap-add to a constant at it.
    channels : int
        Channel count.
    window : str, tuple or array_like, optional
        Analysis window (as given to `StreamingSTFT`). Default ``"hann"``.
    synthesis : optional
        Synthesis window; default the analysis window (sqrt-Hann with
        ``hop = n / 4`` is the usual WOLA pair, see `wola_window`).

    Raises
    ------
    ValueError
        The product of the windows does not overlap-add to a constant at ``hop``.

    Notes
    -----
    Each frame ``k`` yields output samples ``[k*hop, (k+1)*hop)``, final because no
    later frame reaches them. Chained after `StreamingSTFT`, sample ``m`` of the
    output comes out once input sample ``m - m % hop + n - 1`` is in: a latency of
    ``n - hop`` samples (at most ``n - 1``). Samples ``m < n - hop`` are covered by
    fewer frames and are not reconstructed exactly.
    """

    def __init__(
        self,
        n: int,
        hop: int,
        channels: int,
        window: WindowSpec | npt.ArrayLike = "hann",
        synthesis: WindowSpec | npt.ArrayLike | None = None,
    ) -> None:
        _check(n, hop)
        self.n = n
        self.hop = hop
        self.channels = channels
        analysis = _window(window, n)
        synth = analysis if synthesis is None else _window(synthesis, n)
        scaled = synth / _ola_norm(analysis, synth, hop)
        scaled.setflags(write=False)
        self._synthesis = scaled
        self._acc = np.zeros((channels, n), dtype=np.float64)

    def reset(self) -> None:
        """Forget the overlap tail, as if just built."""
        self._acc[:] = 0.0

    def process(self, spectra: npt.ArrayLike) -> F64:
        """Add frames; return the samples they complete.

        Parameters
        ----------
        spectra : array_like, shape (channels, frames, n // 2 + 1)

        Returns
        -------
        ndarray of float64, shape (channels, frames * hop)
        """
        z = np.asarray(spectra)
        count = z.shape[1]
        n, hop = self.n, self.hop
        out = np.empty((self.channels, count * hop), dtype=np.float64)
        if count == 0:
            return out
        y = sp_fft.irfft(z, n=n, axis=-1)
        y *= self._synthesis
        acc = self._acc
        for k in range(count):
            acc += y[:, k]
            out[:, k * hop : (k + 1) * hop] = acc[:, :hop]
            # Shift the accumulator one hop left (overlapping copy is safe left-to-right).
            acc[:, : n - hop] = acc[:, hop:]
            acc[:, n - hop :] = 0.0
        return out
