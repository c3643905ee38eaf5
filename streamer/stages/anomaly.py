"""The anomaly stage: spectral features against a learned background, as onset/offset events."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import scipy.fft as sp_fft

from streamer.block import Annotation, Block, StreamLayout
from streamer.config import AnomalyConfig
from streamer.dsp.stft import StreamingSTFT
from streamer.errors import ConfigError
from streamer.stages.anomaly_model import AnomalyModel, LearnedScorer, model_path

__all__ = ["DETECTORS", "AnomalyStage", "EventTracker", "band_edges"]

F64 = npt.NDArray[np.float64]
Detector = Literal["dropout", "impulsive", "tonal", "broadband", "band_level", "learned"]

# Labelling priority: the most specific explanation among the detectors at or above
# the on threshold names the event (a whistle also lifts its band's level, a click
# train lifts the level of the resonance's band, a burst lifts many bands).
DETECTORS: Final[tuple[Detector, ...]] = (
    "dropout",
    "impulsive",
    "tonal",
    "broadband",
    "band_level",
    "learned",
)
_DROPOUT, _IMPULSIVE, _TONAL, _BROADBAND, _LEVEL, _LEARNED = range(6)
_PRIORITY: Final[dict[Detector, int]] = {d: i for i, d in enumerate(DETECTORS)}
# Column of each detector's score ("broadband" events continue on the band-level score).
_INDEX: Final[dict[Detector, int]] = _PRIORITY | {"broadband": _LEVEL}
# Event pairs (new, open) where the new detection ends the open event and starts its own
# (a dropout ends any other event too).
_PREEMPTS: Final = frozenset({("impulsive", "band_level"), ("tonal", "band_level")})
# A frame whose total level is this far (dB) below the baseline holds an edge, not an impulse.
_EDGE_DROP_DB: Final = 1.5

# Power floor (|X|^2 of a Hann frame): keeps log levels finite in digital silence,
# ~ -140 dB below a full-scale sine's bin.
_EPS: Final = 1e-10
# Smoothing of the power spectrum over frames, y = a*y + (1-a)*P: halves the
# variance of the log periodogram (5.6 dB std per bin for noise) at the cost of
# about one hop of extra delay.
_SMOOTH: Final = 0.5
# Floors of the learned standard deviations (dB; ln-kurtosis), so that a perfectly
# steady synthetic background does not turn a rounding error into an event.
_SD_FLOOR_DB: Final = 0.5
_SD_FLOOR_LNK: Final = 0.05
# Tonal detector: neighbourhood (each side, Hz) whose mean rise is removed from a
# bin's rise, so that a broadband or band-wide rise is not a "line".
_TONAL_NEIGHBOUR_HZ: Final = 750.0
# Share of the bands above threshold that makes a level rise "broadband".
_BROADBAND_SHARE: Final = 0.5
# Impulse-train analysis: history kept, and the repetition rates searched (Hz).
_ENVELOPE_S: Final = 2.0
_REP_MIN_HZ: Final = 1.5
_REP_MAX_HZ: Final = 60.0
_REP_MIN_CORR: Final = 0.3
_REP_WINDOW_S: Final = 0.75  # envelope span the repetition rate is measured over
# Baseline updates clip deviations to this many standard deviations (after warm-up).
_CLIP: Final = 5.0
# The uncensored variance's time constant, in units of baseline_tau_s.
_LONG_TAU: Final = 3.0
_CLIP_LONG: Final = 4.0


def band_edges(cfg: AnomalyConfig, rate: int) -> F64:
    """The analysis bands, Hz.

    Parameters
    ----------
    cfg : AnomalyConfig
        ``bands = "log"`` (``n_bands`` log-spaced from ``fmin_hz`` to ``fmax_hz``, or
        0.45 x rate) or ``"explicit"`` (``bands_hz``).
    rate : int
        Sample rate, Hz.

    Returns
    -------
    ndarray of float64, shape (n_bands, 2)
        ``[low, high]`` per band.

    Raises
    ------
    ConfigError
        A band reaches above Nyquist, or the log range is empty at this rate.
    """
    nyquist = rate / 2
    if cfg.bands == "explicit":
        assert cfg.bands_hz is not None  # the config validator guarantees it
        edges = np.array(cfg.bands_hz, dtype=np.float64).reshape(-1, 2)
        if edges[:, 1].max() > nyquist:
            raise ConfigError(
                f"band edge {edges[:, 1].max():g} Hz is above Nyquist ({nyquist:g} Hz)",
                key="bands_hz",
            )
        return edges
    fmax = 0.45 * rate if cfg.fmax_hz is None else cfg.fmax_hz
    if fmax > nyquist or fmax <= cfg.fmin_hz:
        raise ConfigError(
            f"band range {cfg.fmin_hz:g}-{fmax:g} Hz must lie below Nyquist ({nyquist:g} Hz)",
            key="fmax_hz",
        )
    e = np.geomspace(cfg.fmin_hz, fmax, cfg.n_bands + 1)
    return np.stack([e[:-1], e[1:]], axis=1)


def _load_model(name: str, layout: StreamLayout, key: str) -> AnomalyModel:
    """The learned model ``name`` (shipped or a file), checked against the stream's rate."""
    path = model_path(name)
    try:
        model = AnomalyModel.load(path)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}", key=key) from exc
    if model.rate != layout.rate:
        raise ConfigError(
            f"model {name!r} was trained at {model.rate} Hz but the stream is {layout.rate} Hz: "
            f"put a resample stage before it",
            key=key,
        )
    return model


@dataclass(slots=True)
class _Event:
    """The open event of one channel."""

    event_id: int
    start_frame: int
    onset_frame: int
    last_above: int
    detector: Detector
    band_hz: list[float]
    peak_hz: float | None
    max_score: float
    peak_bin: int = 0  # in the analysed bin range
    repetition_hz: float | None = None


class EventTracker:
    """Hysteresis, minimum duration, merging and refractory logic for one channel's scores.

    Works in frames; `AnomalyStage` feeds it one normalised score per STFT frame.

    Parameters
    ----------
    on, off : float
        Onset and offset thresholds of the normalised score (``off <= on``).
    min_frames : int
        Consecutive frames at or above ``on`` that make an onset (>= 1).
    gap_frames : int
        Consecutive frames below ``off`` that end an event (>= 1); shorter dips
        (a click train's gaps) keep the event open, which merges close recurrences.
    refractory_frames : int
        Frames after an offset during which no onset can start.

    Notes
    -----
    `step` returns ``"onset"`` on the frame completing ``min_frames`` above ``on``;
    ``"offset"`` on the frame completing ``gap_frames`` below ``off``; else None.
    The event's first frame is `pending_start` at onset, its last frame above
    ``off`` is `last_above` at offset.
    """

    def __init__(
        self, on: float, off: float, min_frames: int, gap_frames: int, refractory_frames: int
    ) -> None:
        if not 0 < off <= on:
            raise ValueError(f"thresholds must satisfy 0 < {off=} <= {on=}")
        self.on, self.off = on, off
        self.min_frames = max(1, min_frames)
        self.gap_frames = max(1, gap_frames)
        self.refractory_frames = max(0, refractory_frames)
        self.reset()

    def reset(self) -> None:
        """Back to idle with no history."""
        self.active = False
        self.pending_start = -1
        self.last_above = -1
        self.blocked_until = 0

    def restart(self, k: int) -> None:
        """Open a new event at frame ``k`` in place of the active one (no refractory)."""
        self.active = True
        self.pending_start = k
        self.last_above = k

    def step(self, k: int, score: float) -> Literal["onset", "offset"] | None:
        """Take the score of frame ``k`` (frames must come in increasing order)."""
        if self.active:
            if score >= self.off:
                self.last_above = k
            elif k - self.last_above >= self.gap_frames:
                self.active = False
                self.blocked_until = k + 1 + self.refractory_frames
                self.pending_start = -1
                return "offset"
            return None
        if score >= self.on and k >= self.blocked_until:
            if self.pending_start < 0:
                self.pending_start = k
            if k - self.pending_start + 1 >= self.min_frames:
                self.active = True
                self.last_above = k
                return "onset"
        else:
            self.pending_start = -1
        return None


class AnomalyStage:
    """Spectral anomaly detection: audio passes through; events and spectra annotate blocks.

    Per STFT frame and channel it measures log band energies, the log power
    spectrum, the total level and the kurtosis of the frame whitened by the
    background spectrum, and compares them with a background learned by an
    exponentially weighted mean and variance (time constant ``baseline_tau_s``)
    that does not learn frames inside events or pending onsets and clips what it
    learns to +-5 std, beside a slower variance that learns every frame clipped
    to +-4 std (see `_learn`). Five detectors give a score normalised to 1 at
    their threshold:

    - ``band_level``: rise of a band above its baseline, in units of
      ``max(z_threshold * std, level_db)``; ``broadband`` when half the bands rise;
    - ``tonal``: a new spectral line, the rise of a bin above its baseline minus
      the mean rise of its +-750 Hz neighbourhood, in units of
      ``max(z_threshold * std, tonal_db)``; ``peak_hz`` is the line's frequency;
    - ``impulsive``: ln(kurtosis / baseline kurtosis) of the whitened frame over
      ln(``impulse_ratio``); the offset names the train's repetition rate
      (``repetition_hz``) from the autocorrelation of the per-hop envelope;
    - ``dropout``: drop of the total level below its baseline, over ``dropout_db``.

    Their maximum is the frame's score; `EventTracker` turns scores into events.

    Parameters
    ----------
    cfg : AnomalyConfig
    layout : StreamLayout
        Channel count and rate (Hz) of the stream.
    index : int, optional
        Position of the stage in ``stages``, for error key paths. Default 0.
    block_hint : int, optional
        Unused (any block size works); accepted for the stage factory signature.

    Attributes
    ----------
    name : str
        ``cfg.name`` or ``"anomaly"``.
    n_fft, hop : int
        STFT frame length and hop, samples.
    bands_hz : ndarray of float64, shape (n_bands, 2)
        The analysis bands, Hz.
    detection_delay : int
        Samples from a frame's first sample to the block that can carry its event: ``n_fft``.
    latency : int
        0; see the ``Latency:`` line.

    Latency: 0 samples: the audio is passed through untouched (the same array).
    Events lag the signal instead: an event is attached to the block that
    completes the deciding frame, ``n_fft`` samples after the frame's start plus
    ``min_duration_s`` (about 21 ms + 10 ms at the defaults; see docs/anomaly.md).

    Backends: numpy
    """

    def __init__(
        self,
        cfg: AnomalyConfig,
        layout: StreamLayout,
        *,
        index: int = 0,
        block_hint: int = 256,
    ) -> None:
        self.name: str = cfg.name or "anomaly"
        self.cfg = cfg
        self.layout = layout
        self.latency: int = 0
        rate, ch = layout.rate, layout.channels
        key = f"stages[{index}]"
        n = 2 * max(4, round(cfg.frame_ms * rate / 2000))  # even, >= 8
        self.n_fft: int = n
        self.hop: int = max(1, n // cfg.hop_ratio)
        self._learned_scorer: LearnedScorer | None = None
        self.detection_delay: int = n
        if cfg.model is not None:
            model = _load_model(cfg.model, layout, f"{key}.model")
            z = cfg.model_z if cfg.model_z is not None else float(model.card["threshold_z"])
            self._learned_scorer = LearnedScorer(model, ch, z)
            self.detection_delay = max(n, model.n_fft)
        try:
            self._stft = StreamingSTFT(n, self.hop, ch, cfg.window)
        except ValueError as exc:
            raise ConfigError(f"window {cfg.window!r}: {exc}", key=f"{key}.window") from exc
        try:
            edges = band_edges(cfg, rate)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=f"{key}.{exc.key}") from exc
        freqs = np.arange(n // 2 + 1) * (rate / n)
        self._freqs = freqs
        # Band matrix (bins, bands): bins whose centre lies in [low, high); a band
        # narrower than a bin takes the nearest bin, so none is empty.
        mat = np.zeros((freqs.size, edges.shape[0]))
        for b, (lo, hi) in enumerate(edges):
            inside = (freqs >= lo) & (freqs < hi)
            if not inside.any():
                inside[int(np.argmin(np.abs(freqs - math.sqrt(max(lo, 1.0) * hi))))] = True
            mat[inside, b] = 1.0
        mat.setflags(write=False)
        self._band_mat = mat
        edges.setflags(write=False)
        self.bands_hz: F64 = edges
        self._band_list = [[round(float(lo), 1), round(float(hi), 1)] for lo, hi in edges]
        self._all_band = [self._band_list[0][0], self._band_list[-1][1]]
        lo_bin = int(np.searchsorted(freqs, edges[:, 0].min()))
        hi_bin = int(np.searchsorted(freqs, edges[:, 1].max(), side="right"))
        self._bins = slice(max(1, lo_bin), max(lo_bin + 1, hi_bin))  # DC is never a line
        self._neigh = max(2, round(_TONAL_NEIGHBOUR_HZ / (rate / n)))
        # _local_mean's window edges over the analysed bins (fixed), and its cumsum buffer
        # whose first column stays 0.
        idx = np.arange(self._bins.stop - self._bins.start)
        self._lm_lo = np.maximum(idx - self._neigh, 0)
        self._lm_hi = np.minimum(idx + self._neigh + 1, idx.size)
        self._lm_count = (self._lm_hi - self._lm_lo).astype(np.float64)
        self._lm_cumsum = np.zeros((layout.channels, idx.size + 1))
        # Per-bin band index (-1 outside every band) for naming the band of a line.
        self._bin_band = np.where(mat.any(axis=1), np.argmax(mat, axis=1), -1)

        frame_rate = rate / self.hop
        self.frame_rate: float = frame_rate
        self._alpha = min(1.0, 1.0 / (cfg.baseline_tau_s * frame_rate))
        self._warmup_end = round(cfg.warmup_s * rate)  # sample index
        self._relearn = max(1, round(cfg.relearn_after_s * frame_rate))
        self._trackers = [
            EventTracker(
                cfg.on_threshold,
                cfg.off_threshold,
                math.ceil(cfg.min_duration_s * frame_rate - 1e-9),
                math.ceil(cfg.merge_gap_s * frame_rate - 1e-9),
                round(cfg.refractory_s * frame_rate),
            )
            for _ in range(ch)
        ]
        self._spec_every = (
            0 if cfg.spectrum_rate_hz == 0 else max(1, round(frame_rate / cfg.spectrum_rate_hz))
        )
        self._env_len = max(8, round(_ENVELOPE_S * frame_rate))
        self._rep_frames = max(8, round(_REP_WINDOW_S * frame_rate))
        n_bins, n_bands = freqs.size, edges.shape[0]
        # State, allocated once.
        self._smooth = np.zeros((ch, n_bins))
        self._log_spec = np.zeros((ch, n_bins))
        self._mu_bin = np.zeros((ch, n_bins))
        self._var_bin = np.zeros((ch, n_bins))
        self._mu_band = np.zeros((ch, n_bands))
        self._var_band = np.zeros((ch, n_bands))
        self._mu_tot = np.zeros(ch)
        self._var_tot = np.zeros(ch)
        self._mu_lnk = np.zeros(ch)
        self._var_lnk = np.zeros(ch)
        self._vlong_bin = np.zeros((ch, n_bins))
        self._vlong_band = np.zeros((ch, n_bands))
        self._vlong_tot = np.zeros(ch)
        self._vlong_lnk = np.zeros(ch)
        self._learned = np.zeros(ch)  # frames learned per channel (for the start-up average)
        self._envelope = np.zeros((ch, self._env_len))
        self._events: list[_Event | None] = [None] * ch
        self._next_id = 0  # event ids stay unique for the stage's life, resets included
        self._origin = 0
        self._next_t0: int | None = None
        # Scratch for one frame.
        self._band_db = np.zeros((ch, n_bands))
        self._prev_band_db = np.zeros((ch, n_bands))
        self._flux = np.zeros(ch)  # largest spectral flux since the last spectrum message
        self._band_score = np.zeros((ch, n_bands))
        self._scores = np.zeros((ch, len(DETECTORS)))
        # Detectors seen at or above the threshold during a pending onset.
        self._fired = np.zeros((ch, len(DETECTORS)), dtype=bool)
        self._white_gain = np.zeros((ch, n_bins))
        in_range = np.zeros(n_bins)
        in_range[self._bins] = 1.0
        in_range.setflags(write=False)
        self._in_range = in_range
        self._half = slice(n // 4, n - n // 4)
        self._centre = slice((n - self.hop) // 2 - n // 4, (n + self.hop) // 2 - n // 4)
        self.reset()

    # ------------------------------------------------------------------ public

    def reset(self) -> None:
        """Forget the stream: the baseline, open events and the STFT history."""
        self._stft.reset()
        if self._learned_scorer is not None:
            self._learned_scorer.reset()
        for arr in (
            self._smooth,
            self._mu_bin,
            self._var_bin,
            self._mu_band,
            self._var_band,
            self._mu_tot,
            self._var_tot,
            self._mu_lnk,
            self._var_lnk,
            self._vlong_bin,
            self._vlong_band,
            self._vlong_tot,
            self._vlong_lnk,
            self._learned,
            self._envelope,
            self._flux,
        ):
            arr[...] = 0.0
        for tracker in self._trackers:
            tracker.reset()
        self._fired[...] = False
        self._events = [None] * self.layout.channels
        self._origin = 0  # stream sample index (t0 counting) of the first sample analysed
        self._next_t0 = None

    def process(self, block: Block) -> Block:
        """Analyse one block; return it with any event and spectrum annotations.

        Parameters
        ----------
        block : Block
            ``samples`` of shape (channels, frames), float32; any ``frames``.

        Returns
        -------
        Block
            The same samples (not copied: the stage never writes them), with an
            ``anomaly`` annotation per onset or offset and a ``spectrum``
            annotation per spectrum period whose deciding frame completed in
            this block.

        Raises
        ------
        BlockLayoutError
            The block's channel count or rate differs from the stage's layout.
        """
        self.layout.check(block, "anomaly", self.name)
        # Event times are stream times: from the first block's t0, and moved on by
        # any gap (lost samples) in between, which the frames themselves cannot see.
        if self._next_t0 is None:
            self._origin = block.t0
        else:
            self._origin += block.t0 - self._next_t0
        self._next_t0 = block.t0 + block.frames
        if self._learned_scorer is not None:
            self._learned_scorer.feed(block.samples)
        spectra = self._stft.process(block.samples)
        count = spectra.shape[1]
        if count == 0:
            return block
        first = self._stft.next_frame - count
        power = spectra.real**2 + spectra.imag**2  # (ch, frames, bins)
        notes: list[Annotation] = []
        for j in range(count):
            self._frame(first + j, spectra[:, j], power[:, j], notes)
        return block.annotated(*notes) if notes else block

    # ----------------------------------------------------------------- helpers

    def _whitened_kurtosis(self, spec: npt.NDArray[np.complex128]) -> tuple[F64, F64]:
        """Kurtosis of the frame whitened by the learned background, and its central hop's energy.

        Dividing the spectrum by the background's magnitude (per bin, analysed
        range only) before going back to time flattens hum lines and resonances,
        so that what remains of a stationary machine is near-Gaussian noise and a
        broadband transient (a knock, a bearing defect) stands out in the
        kurtosis: pre-whitening, as in bearing diagnostics. Returns (ch,) arrays.
        """
        gain = self._white_gain
        np.multiply(self._mu_bin, -0.05 * math.log(10.0), out=gain)
        np.exp(gain, out=gain)
        gain *= self._in_range
        w = sp_fft.irfft(spec * gain, n=self.n_fft, axis=-1)  # (ch, n), window-weighted
        # The central half only, where a Hann window is above 1/2: an impulse
        # crosses it in two successive frames (hop = n/4) at nearly full weight.
        w2 = np.square(w[:, self._half])
        m2 = w2.mean(axis=-1)
        m4 = (w2 * w2).mean(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            kurt = np.where(m2 > 1e-30, m4 / (m2 * m2), 3.0)
        # The centre hop of consecutive frames tiles the signal: a per-hop envelope.
        env = w2[:, self._centre].mean(axis=-1)
        return kurt, env

    def _frame(
        self, k: int, spec: npt.NDArray[np.complex128], power: F64, notes: list[Annotation]
    ) -> None:
        """Score frame ``k`` (spectrum and power, (ch, bins)) and run the event logic."""
        cfg = self.cfg
        kurt, env = self._whitened_kurtosis(spec)
        z = cfg.z_threshold
        smooth = self._smooth
        if k == 0:
            smooth[...] = power
        else:
            smooth *= _SMOOTH
            smooth += (1.0 - _SMOOTH) * power
        log_spec = self._log_spec
        np.log10(smooth + _EPS, out=log_spec)
        log_spec *= 10.0
        band_db = self._band_db
        np.log10(smooth @ self._band_mat + _EPS, out=band_db)
        band_db *= 10.0
        # Spectral flux: the mean rise of the band levels since the last frame (dB),
        # its largest since the last spectrum message kept for that message.
        if k:
            flux = np.maximum(band_db - self._prev_band_db, 0.0).mean(axis=1)
            np.maximum(self._flux, flux, out=self._flux)
        self._prev_band_db[...] = band_db
        tot_db = 10.0 * np.log10(smooth[:, self._bins].sum(axis=1) + _EPS)
        lnk = np.log(np.maximum(kurt, 1e-3))
        self._envelope[:, k % self._env_len] = env

        warm = (k * self.hop + self.n_fft) <= self._warmup_end or self._learned.min() < 2
        scores = self._scores
        sd_band = np.sqrt(np.maximum(self._var_band, self._vlong_band))
        band_rise = band_db - self._mu_band
        band_score = self._band_score
        np.divide(
            band_rise,
            np.maximum(z * np.maximum(sd_band, _SD_FLOOR_DB), cfg.level_db),
            out=band_score,
        )
        scores[:, _LEVEL] = band_score.max(axis=1)
        share = (band_score >= cfg.on_threshold).mean(axis=1)
        scores[:, _BROADBAND] = np.where(share >= _BROADBAND_SHARE, scores[:, _LEVEL], 0.0)
        sd_tot = np.maximum(np.sqrt(np.maximum(self._var_tot, self._vlong_tot)), _SD_FLOOR_DB)
        scores[:, _DROPOUT] = (self._mu_tot - tot_db) / np.maximum(cfg.dropout_db, z * sd_tot)
        sd_lnk = np.maximum(np.sqrt(np.maximum(self._var_lnk, self._vlong_lnk)), _SD_FLOOR_LNK)
        scores[:, _IMPULSIVE] = (lnk - self._mu_lnk) / np.maximum(
            math.log(cfg.impulse_ratio), z * sd_lnk
        )
        # An impulse adds energy; a frame losing it holds the hard edge of a
        # dropout or of a burst's end, which the kurtosis also sees.
        scores[:, _IMPULSIVE] *= (self._mu_tot - tot_db) < _EDGE_DROP_DB
        # Tonal: rise of each bin minus the mean rise of its neighbourhood.
        rise = log_spec[:, self._bins] - self._mu_bin[:, self._bins]
        narrow = rise - self._local_mean(rise)
        var_bin = np.maximum(self._var_bin[:, self._bins], self._vlong_bin[:, self._bins])
        sd_bin = np.maximum(np.sqrt(var_bin), _SD_FLOOR_DB)
        tonal = narrow / np.maximum(z * sd_bin, cfg.tonal_db)
        peak_bin = tonal.argmax(axis=1)
        scores[:, _TONAL] = tonal[np.arange(tonal.shape[0]), peak_bin]
        if self._learned_scorer is not None:
            if not cfg.classical:
                scores[...] = 0.0
            # The model's newest frame ended by this frame's last sample.
            scores[:, _LEARNED] = self._learned_scorer.score_at(k * self.hop + self.n_fft)
        score = scores.max(axis=1)

        learn = np.ones(score.shape, dtype=bool)
        if not warm:
            for c, tracker in enumerate(self._trackers):
                open_event = self._events[c]
                # An open event lasts while its own detector stays above the off
                # threshold: a speech syllable after a whistle does not lengthen it.
                if open_event is None:
                    s = float(score[c])
                elif open_event.detector == "tonal":
                    # A line's event lasts while that line does (+-2 bins of drift).
                    i = open_event.peak_bin
                    s = float(tonal[c, max(0, i - 2) : i + 3].max())
                else:
                    s = float(scores[c, _INDEX[open_event.detector]])
                if not math.isfinite(s):
                    s = 0.0
                    learn[c] = False
                state = tracker.step(k, s)
                event = self._events[c]
                if (
                    state is None
                    and event is not None
                    and score[c] >= cfg.on_threshold
                    and self._preempts(self._label(c), event.detector)
                ):
                    # A more specific detector fires inside an open event (a click
                    # train during a band-level rise, a dropout after a burst): end
                    # that event, start this one.
                    notes.append(self._offset(c, k, max(event.start_frame, k - 1)))
                    tracker.restart(k)
                    state = "onset"
                if state == "onset":
                    notes.append(self._onset(c, k, tracker.pending_start, peak_bin[c], rise[c]))
                    self._fired[c] = False
                elif not tracker.active:
                    if tracker.pending_start >= 0:
                        self._fired[c] |= scores[c] >= cfg.on_threshold
                    else:
                        self._fired[c] = False
                if state == "offset":
                    notes.append(self._offset(c, k, tracker.last_above))
                event = self._events[c]
                if event is not None:
                    event.max_score = max(event.max_score, s)
                    learn[c] = k - event.onset_frame >= self._relearn
                    if (
                        event.detector == "impulsive"
                        and event.repetition_hz is None
                        and k - event.start_frame + 1 >= self._rep_frames
                    ):
                        event.repetition_hz = self._repetition(c, event.start_frame, k)
                elif tracker.pending_start >= 0:
                    learn[c] = False
        self._learn(learn, log_spec, band_db, tot_db, lnk, warm=warm)
        if self._spec_every and (k + 1) % self._spec_every == 0:
            notes.append(self._spectrum(k, power))

    def _local_mean(self, x: F64) -> F64:
        """Mean of ``x`` over +-neighbourhood bins along the last axis (edges shrink)."""
        c = self._lm_cumsum
        np.cumsum(x, axis=1, out=c[:, 1:])
        out: F64 = c[:, self._lm_hi] - c[:, self._lm_lo]
        out /= self._lm_count
        return out

    def _learn(
        self,
        mask: npt.NDArray[np.bool_],
        log_spec: F64,
        band_db: F64,
        tot: F64,
        lnk: F64,
        *,
        warm: bool,
    ) -> None:
        """Update the baseline from one frame.

        The mean and variance (exponentially weighted, ``baseline_tau_s``) learn
        only the channels in ``mask``: outside events and pending onsets. After
        warm-up each deviation is clipped to +-_CLIP standard deviations (a
        Huber-type update), so a frame just below the event threshold moves them
        by a bounded step. A second, slower variance (``_LONG_TAU`` x the time
        constant) learns every frame, clipped to +-_CLIP_LONG std: a variance learnt
        only outside events never sees a background that often rises (speech, a
        machine cycling) and keeps flagging it; the slow one widens until those
        rises stop raising events, while one isolated 1 s event widens it by at
        most ~1.3x in standard deviation. The detectors use the larger of the two.
        """
        self._learned += mask
        # Running average at start-up (1/n), then the time constant's weight.
        base = np.maximum(self._alpha, 1.0 / np.maximum(self._learned, 1.0))
        alpha = np.where(mask, base, 0.0)
        along = np.full_like(base, self._alpha / _LONG_TAU)
        for mu, var, vlong, x, floor in (
            (self._mu_bin, self._var_bin, self._vlong_bin, log_spec, _SD_FLOOR_DB),
            (self._mu_band, self._var_band, self._vlong_band, band_db, _SD_FLOOR_DB),
            (self._mu_tot, self._var_tot, self._vlong_tot, tot, _SD_FLOOR_DB),
            (self._mu_lnk, self._var_lnk, self._vlong_lnk, lnk, _SD_FLOOR_LNK),
        ):
            a = alpha if mu.ndim == 1 else alpha[:, None]
            d = x - mu
            if not warm:
                sd = np.maximum(np.sqrt(np.maximum(var, vlong)), floor)
                # The slow variance takes deviations only up to _CLIP_LONG sd: it
                # grows only while more than 1/_CLIP_LONG**2 of the frames lie
                # beyond that, so an anomaly recurring now and then stays one.
                # Clipped as np.clip does, without its Python layers (a few µs a call).
                lim = _CLIP_LONG * sd
                dl = np.minimum(np.maximum(d, -lim), lim)
                al = along if mu.ndim == 1 else along[:, None]
                vlong += al * dl * dl
                vlong *= 1.0 - al
                lim *= _CLIP / _CLIP_LONG
                np.maximum(d, -lim, out=d)
                np.minimum(d, lim, out=d)
            mu += a * d
            # West's EW variance: var <- (1 - a) (var + a d^2)
            var += a * d * d
            var *= 1.0 - a
            if warm:
                vlong[...] = var

    @staticmethod
    def _preempts(new: Detector, old: Detector) -> bool:
        """Whether a ``new`` detection inside an ``old`` event starts an event of its own."""
        # Not impulsive over broadband: the end of a burst is a hard edge, which the
        # kurtosis sees as an impulse.
        return (new == "dropout" and old != "dropout") or (new, old) in _PREEMPTS

    def _label(self, c: int, *, pending: bool = False) -> Detector:
        """The most specific detector at or above the on threshold now (or, with
        ``pending``, in any frame since the onset began)."""
        s = self._scores[c]
        fired = s >= self.cfg.on_threshold
        if pending:
            fired |= self._fired[c]
        for i in (_DROPOUT, _IMPULSIVE, _TONAL, _BROADBAND, _LEVEL, _LEARNED):
            if fired[i]:
                return DETECTORS[i]
        return DETECTORS[int(np.argmax(s))]

    def _onset(self, c: int, k: int, start_frame: int, peak_bin: int, rise: F64) -> Annotation:
        detector = self._label(c, pending=True)
        rate = self.layout.rate
        peak_hz: float | None
        if detector == "dropout":
            band, peak_hz = self._all_band, None
        elif detector == "broadband":
            band = self._all_band
            peak_hz = self._bin_hz(int(np.argmax(rise)), rise)
        elif detector == "learned" and self._learned_scorer is not None:
            # The feature band the model reconstructs worst; its centre as the peak.
            band, peak_hz = self._learned_scorer.band(c)
        elif detector == "tonal":
            peak_hz = self._bin_hz(int(peak_bin), self._log_spec[c, self._bins])
            b = int(self._bin_band[self._bins.start + int(peak_bin)])
            band = self._band_list[b] if b >= 0 else self._all_band
        else:
            b = int(np.argmax(self._band_score[c]))
            band = self._band_list[b]
            inside = self._band_mat[self._bins, b] > 0
            masked = np.where(inside, rise, -np.inf)
            peak_hz = self._bin_hz(int(np.argmax(masked)), masked)
        score = float(self._scores[c].max())
        event = _Event(
            event_id=self._next_id,
            start_frame=start_frame,
            onset_frame=k,
            last_above=k,
            detector=detector,
            band_hz=band,
            peak_hz=peak_hz,
            max_score=score,
            peak_bin=int(peak_bin),
        )
        self._next_id += 1
        self._events[c] = event
        fields: dict[str, Any] = {
            "state": "onset",
            "event_id": event.event_id,
            "start_s": round((self._origin + start_frame * self.hop + self.n_fft / 2) / rate, 6),
            "detected_s": round((self._origin + k * self.hop + self.n_fft) / rate, 6),
            "score": round(score, 4),
            "threshold": self.cfg.on_threshold,
            "band_hz": band,
            "peak_hz": peak_hz,
            "detector": detector,
            "channel": c,
        }
        return Annotation("anomaly", fields)

    def _offset(self, c: int, k: int, last_above: int) -> Annotation:
        event = self._events[c]
        assert event is not None
        self._events[c] = None
        rate = self.layout.rate
        start = (self._origin + event.start_frame * self.hop + self.n_fft / 2) / rate
        end = (self._origin + last_above * self.hop + self.n_fft / 2) / rate
        fields: dict[str, Any] = {
            "state": "offset",
            "event_id": event.event_id,
            "start_s": round(start, 6),
            "detected_s": round((self._origin + k * self.hop + self.n_fft) / rate, 6),
            "score": round(event.max_score, 4),
            "threshold": self.cfg.off_threshold,
            "band_hz": event.band_hz,
            "peak_hz": event.peak_hz,
            "detector": event.detector,
            "channel": c,
            "duration_s": round(max(end - start, self.hop / rate), 6),
        }
        if event.detector == "impulsive":
            rep = event.repetition_hz
            if rep is None:
                rep = self._repetition(c, event.start_frame, last_above)
            fields["repetition_hz"] = rep
        return Annotation("anomaly", fields)

    def _bin_hz(self, i: int, values: F64) -> float:
        """Frequency (Hz) of analysed bin ``i``, refined by a parabola through its neighbours."""
        delta = 0.0
        if 0 < i < values.shape[0] - 1:
            a, b, g = float(values[i - 1]), float(values[i]), float(values[i + 1])
            den = a - 2 * b + g
            if den < 0 and math.isfinite(den):
                delta = min(0.5, max(-0.5, 0.5 * (a - g) / den))
        return round((self._bins.start + i + delta) * self.layout.rate / self.n_fft, 1)

    def _repetition(self, c: int, start: int, stop: int) -> float | None:
        """Repetition rate (Hz) of the impulses in frames [start, stop], or None."""
        length = min(stop - start + 1, self._env_len)
        if length < 8:
            return None
        idx = np.arange(stop - length + 1, stop + 1) % self._env_len
        x = np.sqrt(self._envelope[c, idx])
        x = x - x.mean()
        r = np.correlate(x, x, mode="full")[length - 1 :]
        if r[0] <= 0:
            return None
        r = r / r[0]
        lo = max(2, math.floor(self.frame_rate / _REP_MAX_HZ))
        hi = min(length - 2, math.ceil(self.frame_rate / _REP_MIN_HZ))
        if hi <= lo:
            return None
        seg = r[lo : hi + 1]
        best = float(seg.max())
        if best < _REP_MIN_CORR:
            return None
        # The first lag nearly as good as the best: multiples of the period
        # correlate as well (better, when the period is not a whole number of hops).
        lag = lo + int(np.argmax(seg >= 0.8 * best))
        while lag + 1 <= hi and r[lag + 1] > r[lag]:
            lag += 1  # climb to the local peak
        delta = 0.0
        if lag + 1 < r.shape[0]:
            a, b, g = float(r[lag - 1]), float(r[lag]), float(r[lag + 1])
            den = a - 2 * b + g
            if den < 0:
                delta = min(0.5, max(-0.5, 0.5 * (a - g) / den))
        return round(self.frame_rate / (lag + delta), 2)

    def _spectrum(self, k: int, power: F64) -> Annotation:
        p = power[:, self._bins]
        f = self._freqs[self._bins]
        total = p.sum(axis=1) + _EPS
        flatness = np.exp(np.mean(np.log(p + _EPS), axis=1)) / (total / p.shape[1])
        centroid = (p @ f) / total
        fields: dict[str, Any] = {
            "t_s": round((self._origin + k * self.hop + self.n_fft) / self.layout.rate, 6),
            "frame": k,
            "bands_hz": self._band_list,
            "flatness": [round(float(v), 5) for v in flatness],
            "centroid_hz": [round(float(v), 1) for v in centroid],
            "flux_db": [round(float(v), 3) for v in self._flux],
        }
        self._flux[...] = 0.0
        return Annotation("spectrum", fields, self._band_db.astype(np.float32))
