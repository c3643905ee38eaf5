"""The denoise stage: a spectral gain against a noise floor that it tracks as the stream runs."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from streamer.block import Block, StreamLayout
from streamer.config import DenoiseConfig, ResampleConfig
from streamer.dsp.stft import StreamingISTFT, StreamingSTFT, wola_window
from streamer.errors import BackendUnavailableError, ConfigError
from streamer.stages.resample import ResampleStage

__all__ = ["DenoiseStage", "LearnedGains", "McraWiener"]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
MODEL_MIN_RATE = 16_000  # the learned model's bands reach 8 kHz

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
        self._floor = 10.0 ** (-cfg.floor_db / 20.0)
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
        self._alpha = np.zeros(shape)
        self._gamma = np.zeros(shape)
        self._xi = np.zeros(shape)
        self._tmp = np.zeros(shape)
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
        tmp = self._tmp
        # Presence: p <- a_p p + (1 - a_p) [s > ratio * s_min].
        np.multiply(self._s_min, self.cfg.speech_ratio, out=tmp)
        np.greater(s, tmp, out=tmp, casting="unsafe")
        p = self._p
        p *= _ALPHA_P
        tmp *= 1.0 - _ALPHA_P
        p += tmp
        # Noise: n <- alpha n + (1 - alpha) P, alpha = a_d + (1 - a_d) p.
        alpha = self._alpha
        np.multiply(p, 1.0 - _ALPHA_D, out=alpha)
        alpha += _ALPHA_D
        noise = self._noise
        noise *= alpha
        np.subtract(1.0, alpha, out=tmp)
        tmp *= power
        noise += tmp
        # Decision-directed a-priori SNR and the Wiener gain, floored.
        gamma = self._gamma
        np.maximum(noise, _EPS, out=gamma)
        np.divide(power, gamma, out=gamma)
        a = self.cfg.dd_alpha
        xi = self._xi
        gain = self._gain
        np.multiply(gain, gain, out=xi)
        xi *= self._gamma_prev
        xi *= a
        np.subtract(gamma, 1.0, out=tmp)
        np.maximum(tmp, 0.0, out=tmp)
        tmp *= 1.0 - a
        xi += tmp
        np.add(xi, 1.0, out=tmp)
        np.divide(xi, tmp, out=gain)
        np.maximum(gain, self._floor, out=gain)
        self._gamma_prev[...] = gamma
        return gain


class LearnedGains:
    """Per-frame gains from the learned band-gain GRU, every channel a stream of one batch.

    The model's band energies are computed from the frames' power spectra
    (`streamer.stages.denoise_model`), the network runs once per block over all the
    frames the block completed (its state carried between blocks, so a stream cut
    anywhere gives the same gains), and its band gains, floored, are interpolated
    back to the bins.

    Raises
    ------
    ConfigError
        The model file cannot be read (``key``).
    BackendUnavailableError
        ``device = "cuda"`` and torch sees no CUDA device.
    """

    def __init__(
        self, cfg: DenoiseConfig, channels: int, rate: int, window: F64, key: str
    ) -> None:
        import torch  # a second or two to import: only pipelines with a learned stage pay it

        from streamer.stages.denoise_model import BandLayout, load_denoiser, log_band_energy

        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"{key}.device = 'cuda' but torch {torch.__version__} sees no CUDA device; "
                "use device = 'cpu'"
            )
        try:
            net, self.card = load_denoiser(cfg.model)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{key}.model") from exc
        self._torch = torch
        self._device = torch.device(cfg.device)
        self._net = net.to(self._device)
        self._log_energy = log_band_energy
        self._analysis, self._synthesis = BandLayout(net.bands).weights(rate, window.size)
        self._window_energy = float(np.sum(window**2))
        self._rate = rate
        self._channels = channels
        self._floor = 10.0 ** (-cfg.floor_db / 20.0)
        # One network call now, on silence: torch's first call (its kernel choices, and on
        # a GPU the context) took ~37 ms on the CPU, a stall in the middle of a stream.
        self.reset()
        self.gains(np.zeros((channels, 1, window.size // 2 + 1)))
        self.reset()

    def reset(self) -> None:
        self._state = self._net.initial_state(self._channels, self._device)

    def gains(self, power: F64) -> F64:
        """Gains (channels, frames, bins) for the power spectra (channels, frames, bins) of
        the next frames of the stream."""
        feats = self._log_energy(power, self._analysis, self._window_energy, self._rate)
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(feats.astype(np.float32)).to(self._device)
            bands, self._state = self._net(x, self._state)
            g = bands.cpu().numpy().astype(np.float64)
        np.maximum(g, self._floor, out=g)
        out: F64 = g @ self._synthesis
        return out


class DenoiseStage:
    """Removes noise from each channel, frame by frame: a classical or a learned gain.

    The stream is analysed in sqrt-Hann frames, each frame's spectrum is multiplied
    by a gain and the frames are overlap-added back (perfect reconstruction at unit
    gain). ``method = "classical"``: the `McraWiener` gain on frames of ``frame_ms``
    (hop = frame / ``hop_ratio``), for any signal. ``method = "learned"``: the band
    gains of a trained model (`LearnedGains`) on 20 ms frames with a 10 ms hop; a
    stream below 16 kHz is resampled to 16 kHz for it and back (`ResampleStage`).
    Output sample m is the processed signal's sample ``m - latency``: a stream cut
    into blocks of any sizes gives the same output as the whole signal at once, and
    every block returns as many frames as it brought.

    Parameters
    ----------
    cfg : DenoiseConfig
    layout : StreamLayout
        Channels and rate; the frame is ``frame_ms`` (or 20 ms) at that rate, even.
    index : int, optional
        Position in ``stages``, for error key paths.

    Raises
    ------
    ConfigError
        The learned model cannot be read (``stages[index].model``).
    BackendUnavailableError
        ``device = "cuda"`` without a CUDA device.

    Latency: one frame less one sample, ``n - 1`` (classical: 767 samples, 16 ms, at
    48 kHz; learned: 20 ms less one sample): an output sample is final once the last
    frame covering it has arrived, which for some samples is that long after; a
    constant delay keeps blocks exact. Below 16 kHz the learned method adds the two
    resampling filters' delays.

    Backends: numpy (classical); torch on CPU or CUDA (learned, channels batched)
    """

    def __init__(
        self, cfg: DenoiseConfig, layout: StreamLayout, *, index: int = 0, block_hint: int = 256
    ) -> None:
        self.name: str = cfg.name or "denoise"
        self.cfg = cfg
        self.layout = layout
        self._around: _AtModelRate | None = None
        self.n_fft: int
        self.hop: int
        rate, ch = layout.rate, layout.channels
        if cfg.method == "learned" and rate < MODEL_MIN_RATE:
            self._around = _AtModelRate(cfg, layout, index, block_hint)
            self.n_fft, self.hop = self._around.inner.n_fft, self._around.inner.hop
            self.latency: int = self._around.latency
            return
        if cfg.method == "learned":
            n = 2 * round(rate / 100)  # 20 ms, bins 50 Hz apart at any rate
            hop = n // 2
        else:
            n = 2 * max(8, round(cfg.frame_ms * rate / 2000))  # even, >= 16
            hop = n // cfg.hop_ratio
        self.n_fft, self.hop = n, hop
        self.latency = n - 1
        window = wola_window(n, hop)
        self._stft = StreamingSTFT(n, hop, ch, window)
        self._istft = StreamingISTFT(n, hop, ch, window)
        self._rule: McraWiener | LearnedGains
        if cfg.method == "learned":
            self._rule = LearnedGains(cfg, ch, rate, window, f"stages[{index}]")
        else:
            self._rule = McraWiener(cfg, ch, n // 2 + 1, rate / hop)
        # Processed samples not yet handed out, starting with `latency` zeros.
        self._fifo = _Fifo(ch, self.latency + block_hint + n)
        self.reset()

    def reset(self) -> None:
        """Forget the stream, as if just built."""
        if self._around is not None:
            self._around.reset()
            return
        self._stft.reset()
        self._istft.reset()
        self._rule.reset()
        self._fifo.reset(self.latency)

    def process(self, block: Block) -> Block:
        """Denoise one block; returns ``block.frames`` new float32 samples.

        Raises
        ------
        BlockLayoutError
            The block's channel count or rate differs from the stage's layout.
        """
        self.layout.check(block, "denoise", self.name)
        if self._around is not None:
            return block.with_samples(self._around.process(block))
        spectra = self._stft.process(block.samples)
        if spectra.shape[1]:
            power = spectra.real**2 + spectra.imag**2  # (ch, frames, bins), once per block
            if isinstance(self._rule, LearnedGains):
                spectra *= self._rule.gains(power)
            else:
                for j in range(spectra.shape[1]):
                    spectra[:, j] *= self._rule.gains(power[:, j])
        self._fifo.push(self._istft.process(spectra))
        return block.with_samples(self._fifo.pop(block.frames))


class _Fifo:
    """Samples (channels, n) handed out in order, oldest first; grows once if it must."""

    def __init__(self, channels: int, capacity: int) -> None:
        self._buf = np.zeros((channels, capacity))
        self._fill = 0

    def reset(self, zeros: int) -> None:
        """Empty but for ``zeros`` leading zeros (a constant delay)."""
        self._buf[:, :zeros] = 0.0
        self._fill = zeros

    def push(self, x: F64 | npt.NDArray[np.float32]) -> None:
        need = self._fill + x.shape[1]
        if need > self._buf.shape[1]:
            grown = np.zeros((self._buf.shape[0], need))
            grown[:, : self._fill] = self._buf[:, : self._fill]
            self._buf = grown
        self._buf[:, self._fill : need] = x
        self._fill = need

    def pop(self, n: int) -> npt.NDArray[np.float32]:
        """The oldest ``n`` samples as new float32 memory (handed to other threads)."""
        if n > self._fill:
            raise AssertionError(f"{n} samples asked of a fifo holding {self._fill}")
        buf = self._buf
        out = buf[:, :n].astype(np.float32)
        # COPY: the samples still owed move to the front (a few frames' worth).
        buf[:, : self._fill - n] = buf[:, n : self._fill]
        self._fill -= n
        return out


class _AtModelRate:
    """The learned denoiser at 16 kHz between two resamplers, for a stream below 16 kHz.

    After N input samples the resamplers and the denoiser have given at least N
    output samples (each gives ``ceil`` of its exact share), so the fifo holds
    only the surplus and every block gets its frames.
    """

    def __init__(self, cfg: DenoiseConfig, layout: StreamLayout, index: int, block_hint: int):
        model_layout = StreamLayout(layout.channels, MODEL_MIN_RATE)
        self._up = ResampleStage(ResampleConfig(rate=MODEL_MIN_RATE), layout, index=index,
                                 block_hint=block_hint)
        self.inner = DenoiseStage(cfg, model_layout, index=index,
                                  block_hint=block_hint * MODEL_MIN_RATE // layout.rate + 1)
        self._down = ResampleStage(ResampleConfig(rate=layout.rate), model_layout, index=index,
                                   block_hint=block_hint * MODEL_MIN_RATE // layout.rate + 1)
        ratio = layout.rate / MODEL_MIN_RATE
        self.latency = self._up.latency + math.ceil(
            (self.inner.latency + self._down.latency) * ratio)
        self._fifo = _Fifo(layout.channels, 4 * block_hint + 16)

    def reset(self) -> None:
        self._up.reset()
        self.inner.reset()
        self._down.reset()
        self._fifo.reset(0)

    def process(self, block: Block) -> npt.NDArray[np.float32]:
        self._fifo.push(self._down.process(self.inner.process(self._up.process(block))).samples)
        return self._fifo.pop(block.frames)
