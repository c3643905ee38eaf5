"""A learned model of a machine's normal sound: an autoencoder on log-spectral frames (DCASE-style).

Trained by ``tools/train_anomaly.py`` on recordings of normal operation, it
reconstructs a window of ``context`` feature frames; what it cannot reconstruct
is unlike anything it heard. The anomaly stage feeds the smoothed log
reconstruction error, relative to its spread on held-out normal audio, to the
same event logic as its other detectors (``detector = "learned"``).

The model has its own framing, chosen at training: a machine's harmonics lie a
few tens of hertz apart, which needs longer frames (finer bins) than the
stage's quick classical detectors use. Its features are the log power of the
rfft bins weighted by a matrix stored with the model (fine linear bins where the
harmonics are, mel bands above; `feature_matrix`).

The weights are an .npz file (no pickle) holding the layers, the feature
matrix, the normalisation and a JSON card with the framing; inference is numpy
(a few small matrix products per frame), so using a model needs no torch.
"""

from __future__ import annotations

import json
import zipfile
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.dsp.mel import mel_edges, mel_filterbank
from streamer.dsp.stft import StreamingSTFT

__all__ = [
    "FORMAT",
    "AnomalyModel",
    "LearnedScorer",
    "feature_matrix",
    "log_features",
    "model_path",
    "stack_windows",
]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

FORMAT = "streamer-anomaly-autoencoder/2"
_EPS = 1e-10


def model_path(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A shipped model's file (``"demo-pump"``) or a user's .npz (relative to ``base_dir``)."""
    if name_or_path.endswith(".npz") or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path
    return Path(str(resources.files("streamer.models").joinpath(f"{name_or_path}.npz")))


def feature_matrix(
    rate: int, n_fft: int, linear_max_hz: float, n_mels: int, fmin: float, fmax: float
) -> tuple[F64, F64]:
    """Weights from rfft bins to features, and each feature's band.

    Every bin from ``fmin`` up to ``linear_max_hz`` is a feature of its own (a
    harmonic's exact place and level), then ``n_mels`` mel bands up to ``fmax``
    (the coarse shape of the rest).

    Returns
    -------
    weights : ndarray of float64, shape (n_fft // 2 + 1, features)
        For ``power @ weights``.
    bands : ndarray of float64, shape (features, 2)
        [low, high] Hz of each feature.
    """
    if not 0 <= fmin <= linear_max_hz < fmax <= rate / 2:
        raise ValueError(
            f"need 0 <= fmin ({fmin}) <= linear_max_hz ({linear_max_hz}) < fmax ({fmax}) "
            f"<= rate/2 ({rate / 2})"
        )
    step = rate / n_fft
    bins = np.arange(n_fft // 2 + 1)
    linear = bins[(bins * step >= fmin) & (bins * step < linear_max_hz)]
    lin_w = np.zeros((bins.size, linear.size))
    lin_w[linear, np.arange(linear.size)] = 1.0
    lin_bands = np.stack([(linear - 0.5) * step, (linear + 0.5) * step], axis=1)
    if n_mels == 0:
        return lin_w, lin_bands
    edges = mel_edges(n_mels, linear_max_hz, fmax)
    mel_bands = np.stack([edges[:-2], edges[2:]], axis=1)
    weights = np.concatenate([lin_w, mel_filterbank(rate, n_fft, n_mels, linear_max_hz, fmax)], 1)
    return weights, np.concatenate([lin_bands, mel_bands])


def log_features(power: F64, weights: F64) -> F64:
    """The model's features (dB) of power spectra (..., bins)."""
    out: F64 = 10.0 * np.log10(power @ weights + _EPS)
    return out


def stack_windows(feats: F64, context: int) -> F32:
    """The model's inputs: ``context`` consecutive frames side by side, oldest first.

    (frames, features) -> (frames - context + 1, context * features), float32.
    """
    stacked = np.lib.stride_tricks.sliding_window_view(feats, context, axis=0)  # (N, feat, ctx)
    out: F32 = stacked.transpose(0, 2, 1).reshape(stacked.shape[0], -1).astype(np.float32)
    return out


@dataclass(frozen=True)
class AnomalyModel:
    """An autoencoder and its front end, as trained.

    Attributes
    ----------
    card : dict
        ``rate``, ``n_fft``, ``hop``, ``window``, ``context`` (frames per input
        window), ``smooth_frames`` (errors averaged), ``error_mean`` and
        ``error_std`` (of the smoothed ln error on held-out normal audio),
        ``threshold_z``, and how it was trained.
    weights, biases : list of ndarray
        Dense layers, ReLU between them, linear output.
    mean, std : ndarray
        Per-input normalisation of the stacked feature window.
    features, bands : ndarray
        The feature matrix (bins, features) and each feature's [low, high] Hz.
    """

    card: dict[str, Any]
    weights: list[F32]
    biases: list[F32]
    mean: F32
    std: F32
    features: F64
    bands: F64

    @property
    def rate(self) -> int:
        return int(self.card["rate"])

    @property
    def n_fft(self) -> int:
        return int(self.card["n_fft"])

    @property
    def hop(self) -> int:
        return int(self.card["hop"])

    @property
    def window(self) -> str:
        return str(self.card["window"])

    @property
    def context(self) -> int:
        return int(self.card["context"])

    @classmethod
    def load(cls, path: Path) -> AnomalyModel:
        """Read a model file; ValueError (with the reason) if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                card = json.loads(str(z["card"]))
                if card.get("format") != FORMAT:
                    raise ValueError(f"not a {FORMAT} model (format {card.get('format')!r})")
                layers = int(card["layers"])
                weights = [z[f"w{i}"].astype(np.float32) for i in range(layers)]
                biases = [z[f"b{i}"].astype(np.float32) for i in range(layers)]
                mean, std = z["mean"].astype(np.float32), z["std"].astype(np.float32)
                features, bands = z["features"].astype(np.float64), z["bands"].astype(np.float64)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith("not a "):
                raise
            raise ValueError(f"cannot read the model: {exc}") from exc
        width = card["context"] * features.shape[1]
        if features.shape[0] != card["n_fft"] // 2 + 1 or bands.shape != (features.shape[1], 2):
            raise ValueError(f"the feature matrix does not fit {card['n_fft']}-point frames")
        if weights[0].shape[0] != width or weights[-1].shape[1] != width:
            raise ValueError(f"layer shapes do not match a {width}-wide input")
        return cls(card, weights, biases, mean, std, features, bands)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"card": np.array(json.dumps(self.card))}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        # Compressed: the feature matrix is mostly zeros.
        np.savez_compressed(
            path, mean=self.mean, std=self.std, features=self.features, bands=self.bands, **arrays
        )

    def residuals(self, windows: F32) -> F32:
        """Squared reconstruction error of each normalised input, (N, context*features)."""
        x = (windows - self.mean) / self.std
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                np.maximum(h, 0.0, out=h)
        out: F32 = (h - x) ** 2
        return out

    def errors(self, windows: F32) -> F32:
        """Mean squared reconstruction error of each stacked window, (N,)."""
        err: F32 = self.residuals(windows).mean(axis=-1)
        return err

    def scores(self, power: F64, z: float) -> F64:
        """Whole-signal scores of one channel: the offline twin of `LearnedScorer.step`.

        ``power`` (frames, bins) are power spectra of the model's framing; the
        result has one score per frame, 0 for the first ``context - 1``.
        """
        windows = stack_windows(log_features(power, self.features), self.context)
        ln = np.log(self.errors(windows) + _EPS).astype(np.float64)
        k = int(self.card["smooth_frames"])
        # Mean of the last k ln errors, or of all so far while fewer than k exist.
        csum = np.concatenate([[0.0], np.cumsum(ln)])
        ends = np.arange(1, ln.size + 1)
        starts = np.maximum(0, ends - k)
        smoothed = (csum[ends] - csum[starts]) / (ends - starts)
        out = np.zeros(power.shape[0])
        card = self.card
        out[self.context - 1 :] = (smoothed - card["error_mean"]) / (z * card["error_std"])
        return out


class LearnedScorer:
    """The model applied to a stream, frame by frame of its own framing, per channel.

    `feed` takes the stream's samples in blocks of any size; `score_at(end)`
    then gives, per channel, the score of the newest model frame that ended at
    or before sample ``end`` (samples counted from the first fed), so that the
    stage reads the same scores at the same points whatever the block sizes.

    A score is ``(e - error_mean) / (z * error_std)`` for ``e``, the ln
    reconstruction error averaged over the last ``smooth_frames`` windows: 1 at
    the threshold, like the stage's other detectors; 0 until ``context`` frames
    have been seen. `band` names the feature band that the newest window read
    at `score_at` reconstructs worst.
    """

    def __init__(self, model: AnomalyModel, channels: int, z: float):
        self.model = model
        self._z = z
        self._stft = StreamingSTFT(model.n_fft, model.hop, channels, model.window)
        n_feat = model.features.shape[1]
        self._n_feat = n_feat
        self._window = np.zeros((channels, model.context * n_feat), dtype=np.float32)
        self._errors = np.zeros((channels, int(model.card["smooth_frames"])))
        self._band_error = np.zeros((channels, n_feat), dtype=np.float32)
        # Scored frames not yet read: (end sample, scores, worst feature per channel).
        self._ready: deque[tuple[int, F64, npt.NDArray[np.intp]]] = deque()
        self._score = np.zeros(channels)
        self._worst = np.zeros(channels, dtype=np.intp)
        self.reset()

    def reset(self) -> None:
        """Forget the stream, as if just built."""
        self._stft.reset()
        self._window[...] = 0.0
        self._errors[...] = 0.0
        self._ready.clear()
        self._score[...] = 0.0
        self._worst[...] = 0
        self._seen = 0

    def feed(self, samples: npt.ArrayLike) -> None:
        """Take the stream's next samples (channels, frames) and score the frames they complete."""
        spectra = self._stft.process(samples)
        first = self._stft.next_frame - spectra.shape[1]
        m = self.model
        for j in range(spectra.shape[1]):
            spec = spectra[:, j]
            score = self.step(spec.real**2 + spec.imag**2)
            end = (first + j) * m.hop + m.n_fft
            self._ready.append((end, score, self._band_error.argmax(axis=1)))

    def score_at(self, end: int) -> F64:
        """Per channel, the score of the newest frame ended by sample ``end`` (exclusive)."""
        while self._ready and self._ready[0][0] <= end:
            _, self._score, self._worst = self._ready.popleft()
        return self._score

    def band(self, channel: int) -> tuple[list[float], float]:
        """The worst-reconstructed feature's [low, high] band and centre, Hz, for ``channel``."""
        lo, hi = self.model.bands[int(self._worst[channel])]
        return [round(float(lo), 1), round(float(hi), 1)], round(float(lo + hi) / 2, 1)

    def step(self, power: F64) -> F64:
        """Score one frame's power spectra (channels, bins) of the model's framing."""
        n = self._n_feat
        context = self.model.context
        # Shift the window one frame and append the newest feature frame.
        self._window[:, :-n] = self._window[:, n:]
        self._window[:, -n:] = log_features(power, self.model.features)
        self._seen += 1
        if self._seen < context:
            return np.zeros(power.shape[0])
        errors = self._errors
        errors[:, :-1] = errors[:, 1:]
        residuals = self.model.residuals(self._window)
        errors[:, -1] = np.log(residuals.mean(axis=-1) + _EPS)
        residuals.reshape(residuals.shape[0], context, n).mean(axis=1, out=self._band_error)
        filled = min(self._seen - context + 1, errors.shape[1])
        smoothed = errors[:, errors.shape[1] - filled :].mean(axis=1)
        card = self.model.card
        score: F64 = (smoothed - card["error_mean"]) / (self._z * card["error_std"])
        return score
