"""The denoise stage: a spectral gain against a noise floor that it tracks as the stream runs."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from streamer.block import Block, StreamLayout
from streamer.config import DenoiseConfig
from streamer.dsp.stft import StreamingISTFT, StreamingSTFT, wola_window

__all__ = ["DenoiseStage", "McraWiener"]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

# MCRA (Cohen & Berdugo 2002) constants, as published: power smoothing over time, the
# smoothing of the speech-presence probability and of the noise estimate.
_ALPHA_S = 0.8
_ALPHA_P = 0.2
_ALPHA_D = 0.95
_SUBWINDOWS = 8  # the minimum over noise_window_s, kept as the minima of 8 sub-windows
_EPS = 1e-20


class McraWiener:
    """Per-frame gains: an MCRA noise tracker and a decision-directed Wiener rule.

    For each frame's power P (channels, bins): S, P smoothed over time and
    across neighbouring bins, and its minimum over ``noise_window_s`` (minimum
    statistics in sub-windows) tell where a bin holds signal (``S > speech_ratio
    * S_min``); the speech-presence probability p is that indicator smoothed;
    the noise power follows P with a smoothing that rises to 1 where p does, so
    it learns in the gaps of speech or of a machine's cycle and holds inside
    them. The a-priori SNR is the decision-directed estimate (Ephraim & Malah
    1984), ``xi = a G_prev^2 gamma_prev + (1 - a) max(gamma - 1, 0)``, and the
    gain ``max(xi / (1 + xi), floor)``. The first frame is taken as noise.

    The state is explicit (`reset`), and frames are taken in order, one at a
    time, so that a stream cut anywhere gives the same gains.
    """

    def __init__(self, cfg: DenoiseConfig, channels: int, bins: int, frames_per_s: float):
        self.cfg = cfg
        self._floor = 10.0 ** (-cfg.max_attenuation_db / 20.0)
        window_frames = max(_SUBWINDOWS, round(cfg.noise_window_s * frames_per_s))
        self._sub_len = math.ceil(window_frames / _SUBWINDOWS)
        shape = (channels, bins)
        self._s = np.zeros(shape)
        self._s_min = np.zeros(shape)
        self._s_cur = np.zeros(shape)  # minimum of the current sub-window
        self._subs = np.zeros((_SUBWINDOWS, *shape))
        self._p = np.zeros(shape)
        self._noise = np.zeros(shape)
        self._gain = np.ones(shape)
        self._gamma_prev = np.ones(shape)
        self._smooth = np.zeros(shape)
        self._scratch = np.zeros(shape)
        self.reset()

    def reset(self) -> None:
        self._frames = 0

    def gains(self, power: F64) -> F64:
        """The gain for one frame's power spectra (channels, bins); a view valid until the
        next call."""
        # Across frequency: [1/4, 1/2, 1/4], edges mirrored.
        sm = self._smooth
        sm[:, 1:-1] = 0.5 * power[:, 1:-1] + 0.25 * (power[:, :-2] + power[:, 2:])
        sm[:, 0], sm[:, -1] = power[:, 0], power[:, -1]
        if self._frames == 0:
            for arr in (self._s, self._s_min, self._s_cur, self._noise):
                arr[...] = sm
            self._subs[...] = sm
            self._p[...] = 0.0
            self._gain[...] = 1.0
            self._gamma_prev[...] = 1.0
        s = self._s
        s *= _ALPHA_S
        s += (1.0 - _ALPHA_S) * sm
        np.minimum(self._s_cur, s, out=self._s_cur)
        np.minimum(self._s_min, s, out=self._s_min)
        self._frames += 1
        if self._frames % self._sub_len == 0:
            # A sub-window ends: the oldest leaves the window's minimum.
            slot = (self._frames // self._sub_len) % _SUBWINDOWS
            self._subs[slot] = self._s_cur
            self._subs.min(axis=0, out=self._s_min)
            self._s_cur[...] = s
        present = s > self.cfg.speech_ratio * self._s_min
        p = self._p
        p *= _ALPHA_P
        p += (1.0 - _ALPHA_P) * present
        alpha = self._scratch
        np.multiply(p, 1.0 - _ALPHA_D, out=alpha)
        alpha += _ALPHA_D
        noise = self._noise
        noise *= alpha
        noise += (1.0 - alpha) * power
        gamma = power / np.maximum(noise, _EPS)
        a = self.cfg.dd_alpha
        xi = a * self._gain**2 * self._gamma_prev + (1.0 - a) * np.maximum(gamma - 1.0, 0.0)
        gain = self._gain
        np.divide(xi, 1.0 + xi, out=gain)
        np.maximum(gain, self._floor, out=gain)
        self._gamma_prev[...] = gamma
        return gain


class DenoiseStage:
    """Removes stationary and slowly changing noise from each channel, frame by frame.

    The stream is analysed in frames of ``frame_ms`` (sqrt-Hann, hop = frame /
    ``hop_ratio``), each frame's spectrum is multiplied by the `McraWiener` gain
    and the frames are overlap-added back (perfect reconstruction at unit gain).
    Output sample m is the processed signal's sample ``m - latency``: a stream
    cut into blocks of any sizes gives the same output as the whole signal at
    once, and every block returns as many frames as it brought.

    Parameters
    ----------
    cfg : DenoiseConfig
    layout : StreamLayout
        Channels and rate; the frame is ``frame_ms`` at that rate, even.

    Latency: one frame less one sample, ``n - 1`` (767 samples, 16 ms, at 48 kHz):
    an output sample is final once the last frame covering it has arrived, which
    for some samples is that long after; a constant delay keeps blocks exact.

    Backends: numpy
    """

    def __init__(
        self, cfg: DenoiseConfig, layout: StreamLayout, *, index: int = 0, block_hint: int = 256
    ) -> None:
        self.name: str = cfg.name or "denoise"
        self.cfg = cfg
        self.layout = layout
        rate, ch = layout.rate, layout.channels
        n = 2 * max(8, round(cfg.frame_ms * rate / 2000))  # even, >= 16
        hop = n // cfg.hop_ratio
        self.n_fft, self.hop = n, hop
        self.latency: int = n - 1
        window = wola_window(n, hop)
        self._stft = StreamingSTFT(n, hop, ch, window)
        self._istft = StreamingISTFT(n, hop, ch, window)
        self._rule = McraWiener(cfg, ch, n // 2 + 1, rate / hop)
        # Processed samples not yet handed out, starting with `latency` zeros; sized for
        # the usual block and grown once for a longer one.
        self._fifo = np.zeros((ch, self.latency + block_hint + n))
        self.reset()

    def reset(self) -> None:
        """Forget the stream, as if just built."""
        self._stft.reset()
        self._istft.reset()
        self._rule.reset()
        self._fifo[...] = 0.0
        self._fill = self.latency

    def process(self, block: Block) -> Block:
        """Denoise one block; returns ``block.frames`` new float32 samples.

        Raises
        ------
        BlockLayoutError
            The block's channel count or rate differs from the stage's layout.
        """
        self.layout.check(block, f"denoise stage {self.name!r}")
        spectra = self._stft.process(block.samples)
        for j in range(spectra.shape[1]):
            spectra[:, j] *= self._rule.gains(spectra[:, j].real ** 2 + spectra[:, j].imag ** 2)
        done = self._istft.process(spectra)
        need = self._fill + done.shape[1]
        if need > self._fifo.shape[1]:
            grown = np.zeros((self._fifo.shape[0], need))
            grown[:, : self._fill] = self._fifo[:, : self._fill]
            self._fifo = grown
        fifo = self._fifo
        fifo[:, self._fill : need] = done
        n = block.frames
        out = fifo[:, :n].astype(np.float32)  # the block handed on: new memory
        # COPY: the samples still owed move to the front (a few frames' worth).
        fifo[:, : need - n] = fifo[:, n:need]
        self._fill = need - n
        return block.with_samples(out)
