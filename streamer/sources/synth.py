"""The synth source: a deterministic, seeded scene of tones, noise, hum, speech and anomalies."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.signal as sp_signal

from streamer.block import Block, StreamLayout
from streamer.config import SynthSourceConfig
from streamer.errors import ConfigError
from streamer.sources.base import NO_METADATA, Pacer

__all__ = ["ANOMALIES", "SEGMENT", "SynthSource", "anomaly_schedule"]

# Ground truth of the injected anomalies: (name, start as a fraction of
# ``anomaly_period_s``, duration in seconds). They repeat every period; starts are
# fractions so that they fit the shortest allowed period (4 s: 0.6-1.6, 1.8-3.3,
# 3.4-3.9 s) and leave a detector a few seconds of baseline at the default 20 s
# (3-4, 9-10.5, 17-17.5 s). `anomaly_schedule` turns this into seconds, rounded to
# whole samples exactly as they are generated.
#   whistle: a steady tone at min(3.1 kHz, 0.2 * rate), -18 dBFS peak, 5 ms fades;
#   clicks:  a 12 Hz train of knocks (a 1.5 ms damped resonance at min(3.6 kHz,
#            0.3 * rate), -12 dBFS peak), like a damaged bearing;
#   dropout: the whole signal multiplied by 1e-3 (-60 dB), hard edges.
ANOMALIES: Final[tuple[tuple[str, float, float], ...]] = (
    ("whistle", 0.15, 1.0),
    ("clicks", 0.45, 1.5),
    ("dropout", 0.85, 0.5),
)

# Frames generated at a time. Every random draw and every filter step happens per
# segment, in segment order, so the signal depends on the sample index alone and
# never on how the caller cuts it into blocks.
SEGMENT: Final = 4096

_WHISTLE_HZ: Final = 3100.0
_WHISTLE_PEAK: Final = 10 ** (-18 / 20)
_WHISTLE_FADE_S: Final = 0.005
_CLICK_HZ: Final = 3600.0
_CLICK_RATE_HZ: Final = 12.0
_CLICK_PEAK: Final = 10 ** (-12 / 20)
_CLICK_TAU_S: Final = 0.0015
_DROPOUT_GAIN: Final = 1e-3

# Mains hum: (harmonic number, peak level dBFS); odd harmonics dominate, as from a
# saturating transformer.
_HUM: Final = ((1, -40.0), (2, -48.0), (3, -44.0), (5, -50.0))

# Speech: RMS of a syllable at the top of its envelope, and the vowels' formants
# (Peterson & Barney averages) with bandwidths, Hz.
_SPEECH_RMS: Final = 10 ** (-20 / 20)
_VOWELS: Final = (
    (730.0, 1090.0, 2440.0),  # a
    (270.0, 2290.0, 3010.0),  # i
    (300.0, 870.0, 2240.0),  # u
    (530.0, 1840.0, 2480.0),  # e
    (570.0, 840.0, 2410.0),  # o
)
_FORMANT_BW: Final = (80.0, 100.0, 140.0)
_GLOTTAL_TILT_HZ: Final = 300.0  # one-pole low-pass giving the pulses a -6 dB/oct tilt

# Pink noise: the 3-pole/3-zero 1/f approximation from the music-dsp / Julius
# Smith notes (within ±0.3 dB of -10 dB/decade from ~10 Hz to Nyquist at 44.1 kHz);
# one lfilter call with carried state, cheaper than Kellet's 7 one-poles.
_PINK_B: Final = (0.049922035, -0.095993537, 0.050612699, -0.004408786)
_PINK_A: Final = (1.0, -2.494956002, 2.017265875, -0.522189400)
# Brown noise: leaky integration, -6 dB/oct above this corner (a pure integrator
# would wander off without bound).
_BROWN_CORNER_HZ: Final = 20.0

# Spawn key of the scene constants' RNG, distinct from every per-segment
# ``default_rng([seed, segment])`` stream.
_CONST_KEY: Final = (0x5C3E,)

F64 = npt.NDArray[np.float64]


def _anomaly_windows(cfg: SynthSourceConfig) -> list[tuple[str, int, int]]:
    """The anomalies of the first period as ``(name, start, stop)`` sample indices."""
    if not cfg.anomalies:
        return []
    out = []
    for name, frac, dur_s in ANOMALIES:
        start = round(frac * cfg.anomaly_period_s * cfg.rate)
        out.append((name, start, start + round(dur_s * cfg.rate)))
    return out


def anomaly_schedule(cfg: SynthSourceConfig) -> list[tuple[str, float, float]]:
    """Where the injected anomalies lie within the first period.

    Parameters
    ----------
    cfg : SynthSourceConfig
        The scene; its ``rate`` and ``anomaly_period_s`` place the anomalies.

    Returns
    -------
    list of (name, start_s, end_s)
        One entry per anomaly (``"whistle"``, ``"clicks"``, ``"dropout"``), in
        seconds from the start of the stream, rounded to whole samples. Period
        ``k`` holds them shifted by ``k * round(anomaly_period_s * rate) / rate``.
        Empty when ``cfg.anomalies`` is false.
    """
    return [(name, a / cfg.rate, b / cfg.rate) for name, a, b in _anomaly_windows(cfg)]


def _cycles(freq_hz: float, n0: int, rate: int) -> float:
    """Fractional cycles of ``freq_hz`` at sample ``n0``, exact for any stream length."""
    # f * n0 / rate in float64 loses the fraction after a few weeks; splitting n0
    # into whole seconds keeps every term small.
    sec, rem = divmod(n0, rate)
    return ((freq_hz * sec) % 1.0 + freq_hz * rem / rate) % 1.0


def _resonator(freq_hz: float, bw_hz: float, rate: int) -> F64:
    """A two-pole resonator as one second-order section ``[b0 b1 b2 1 a1 a2]``."""
    r = math.exp(-math.pi * bw_hz / rate)
    theta = 2 * math.pi * freq_hz / rate
    return np.array([1.0 - r, 0.0, 0.0, 1.0, -2 * r * math.cos(theta), r * r])


@dataclass(slots=True)
class _Syllable:
    start: int  # absolute sample index
    length: int  # samples
    f0_start: float  # Hz
    f0_end: float  # Hz
    vowel: int
    amp: float
    next_pulse: float = 0.0  # samples after start


class _Scene:
    """The generator of one run of the scene: every piece of carried state, segment by segment."""

    def __init__(self, src: SynthSource):
        self._src = src
        const = src._const
        self._seg = 0
        self._pink_zi = const.pink_zi0.copy()
        self._brown_zi = const.brown_zi0.copy()
        self._speech_zi = np.zeros((const.speech_sos.shape[1], 2))
        self._vowel = 0
        self._syllable: _Syllable | None = None
        self._cursor = 0  # where the last syllable ended
        self._group_left = 0
        self._group_f0 = 150.0
        self._first_group = True

    def next_segment(self) -> npt.NDArray[np.float32]:
        """Generate the next ``SEGMENT`` frames, shape (channels, SEGMENT)."""
        src, cfg, const = self._src, self._src.cfg, self._src._const
        a = self._seg * SEGMENT
        # The per-segment RNG: draws happen in a fixed order (noise, then speech).
        rng = np.random.default_rng([cfg.seed, self._seg])
        self._seg += 1
        rate = cfg.rate
        k = np.arange(SEGMENT, dtype=np.float64)
        out = np.zeros((cfg.channels, SEGMENT))

        for freq, amps, phases in const.tones:
            cyc = _cycles(freq, a, rate)
            out += amps[:, None] * np.sin(
                (2 * np.pi) * (cyc + freq / rate * k)[None, :] + phases[:, None]
            )

        out += self._noise(rng)
        if cfg.speech_bursts:
            out += const.speech_gain[:, None] * self._speech(rng, a)[None, :]
        for name, start, stop in src._windows:
            for lo, hi, began in self._occurrences(a, start, stop):
                self._anomaly(out, name, a, lo, hi, lo - began, stop - start)
        return out.astype(np.float32)

    # ------------------------------------------------------------------ parts

    def _noise(self, rng: np.random.Generator) -> F64:
        cfg, const = self._src.cfg, self._src._const
        white = rng.standard_normal((cfg.channels, SEGMENT))
        if cfg.noise == "pink":
            white, self._pink_zi = sp_signal.lfilter(
                const.pink_b, _PINK_A, white, axis=-1, zi=self._pink_zi
            )
        elif cfg.noise == "brown":
            white, self._brown_zi = sp_signal.lfilter(
                const.brown_b, const.brown_a, white, axis=-1, zi=self._brown_zi
            )
        white *= const.noise_amp
        return white

    def _occurrences(self, a: int, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(lo, hi, began)``: the part ``[lo, hi)`` of each repetition of a window that
        meets this segment, and where that repetition began (absolute samples)."""
        period = self._src._const.period
        b = a + SEGMENT
        k = max(0, (a - stop) // period)
        while k * period + start < b:
            lo, hi = max(a, k * period + start), min(b, k * period + stop)
            if lo < hi:
                yield lo, hi, k * period + start
            k += 1

    def _anomaly(
        self, out: F64, name: str, a: int, lo: int, hi: int, since: int, length: int
    ) -> None:
        """Add (or apply) one anomaly over absolute ``[lo, hi)`` of the segment at ``a``.

        This occurrence began ``since`` samples before ``lo`` and lasts ``length``.
        """
        const = self._src._const
        rate = self._src.cfg.rate
        seg = slice(lo - a, hi - a)
        # m: samples since the start of this occurrence of the anomaly
        m = np.arange(since, since + (hi - lo), dtype=np.float64)
        if name == "whistle":
            fade = np.clip(np.minimum(m, length - 1 - m) / const.whistle_fade, 0.0, 1.0)
            fade = 0.5 - 0.5 * np.cos(np.pi * fade)
            wave = np.sin((2 * np.pi * const.whistle_hz / rate) * m) * fade
            out[:, seg] += (_WHISTLE_PEAK * const.anomaly_gain)[:, None] * wave[None, :]
        elif name == "clicks":
            knock = np.zeros(hi - lo)
            kern = const.click_kernel
            first = int(since * _CLICK_RATE_HZ // rate) - 1
            j = max(first, 0)
            while True:
                at = round(j * rate / _CLICK_RATE_HZ)  # click start, since window start
                if at >= since + (hi - lo) or at >= length:
                    break
                # overlap of [at, at + len(kern)) with [since, since + hi - lo)
                k0, k1 = max(at, since), min(at + kern.size, since + (hi - lo))
                if k0 < k1:
                    knock[k0 - since : k1 - since] += kern[k0 - at : k1 - at]
                j += 1
            out[:, seg] += const.anomaly_gain[:, None] * knock[None, :]
        else:  # dropout
            out[:, seg] *= _DROPOUT_GAIN

    def _speech(self, rng: np.random.Generator, a: int) -> F64:
        """The mono speech track of this segment: a glottal pulse train through formants."""
        const, rate = self._src._const, self._src.cfg.rate
        b = a + SEGMENT
        exc = np.zeros(SEGMENT)
        switches: list[tuple[int, int]] = []  # (offset in segment, vowel) where a syllable starts
        while True:
            syl = self._syllable
            if syl is None:
                syl = self._syllable = self._new_syllable(rng)
            if syl.start >= b:
                break
            if syl.next_pulse == 0.0:
                switches.append((syl.start - a, syl.vowel))
            t = syl.next_pulse
            while t < syl.length and syl.start + int(t) < b:
                u = t / syl.length
                f0 = syl.f0_start + (syl.f0_end - syl.f0_start) * u
                env = math.sin(math.pi * u) ** 2
                # pulse amplitude for RMS _SPEECH_RMS at f0: rms = A * sqrt(E * f0 / rate)
                amp = syl.amp * env / math.sqrt(const.vowel_energy[syl.vowel] * f0 / rate)
                exc[syl.start + int(t) - a] += _SPEECH_RMS * amp
                # 2 % period jitter: voiced speech is never perfectly periodic
                t += rate / f0 * (1.0 + 0.02 * float(rng.standard_normal()))
            syl.next_pulse = max(t, 1e-9)
            if t < syl.length:
                break  # the syllable goes on in the next segment
            self._cursor = syl.start + syl.length
            self._syllable = None

        y = np.empty(SEGMENT)
        edges = [*switches, (SEGMENT, -1)]
        pos = 0
        for off, vowel in edges:
            if off > pos:
                y[pos:off], self._speech_zi = sp_signal.sosfilt(
                    const.speech_sos[self._vowel], exc[pos:off], zi=self._speech_zi
                )
                pos = off
            if vowel >= 0:
                self._vowel = vowel
        return y

    def _new_syllable(self, rng: np.random.Generator) -> _Syllable:
        rate = self._src.cfg.rate
        if self._group_left == 0:
            # a new group of 2-6 syllables after a pause
            pause_s = 0.25 if self._first_group else rng.uniform(0.4, 1.5)
            self._first_group = False
            self._group_left = int(rng.integers(2, 7))
            self._group_f0 = rng.uniform(100.0, 220.0)
        else:
            pause_s = rng.uniform(0.04, 0.12)  # a consonant-like gap
        self._group_left -= 1
        f0 = self._group_f0 * rng.uniform(0.9, 1.1)
        return _Syllable(
            start=self._cursor + round(pause_s * rate),
            length=max(1, round(rng.uniform(0.1, 0.3) * rate)),
            f0_start=f0,
            f0_end=f0 * rng.uniform(0.8, 1.05),  # mostly falling intonation
            vowel=int(rng.integers(len(_VOWELS))),
            amp=rng.uniform(0.6, 1.0),
        )


@dataclass(frozen=True, slots=True)
class _Constants:
    """Everything about the scene that does not change with time, derived once."""

    tones: list[tuple[float, F64, F64]]  # (Hz, peak per channel, phase per channel)
    noise_amp: F64  # (channels, 1)
    pink_b: F64
    pink_zi0: F64
    brown_b: F64
    brown_a: F64
    brown_zi0: F64
    speech_sos: F64  # (vowels, sections, 6)
    vowel_energy: tuple[float, ...]  # sum of squares of each vowel's impulse response
    speech_gain: F64  # (channels,)
    anomaly_gain: F64  # (channels,)
    whistle_hz: float
    whistle_fade: float  # samples
    click_kernel: F64
    period: int  # samples


class SynthSource:
    """A deterministic, seeded test scene: the service's embedded default input.

    The signal is a pure function of the config and the sample index: blocks of
    any sizes concatenate to the same samples, bit for bit. It mixes

    - steady tones at ``tones_hz``, each ``tone_level_db`` dBFS peak;
    - white, pink or brown noise at ``noise_level_db`` dBFS RMS, independent per
      channel;
    - mains hum at ``hum_hz`` and harmonics 2, 3, 5, around -40 dBFS;
    - speech-like voiced syllables (100-220 Hz glottal pulses with jitter through
      three formant resonators, 100-300 ms each, in groups of 2-6 between
      pauses), about -20 dBFS RMS at their peak;
    - anomalies repeating every ``anomaly_period_s``: a whistle, a click train and
      a dropout; see `ANOMALIES` and `anomaly_schedule`.

    Channels differ slightly (gains within 1 dB, tone phases, independent noise).
    Nothing is clipped: the default levels keep peaks well below 0 dBFS.

    Parameters
    ----------
    cfg : SynthSourceConfig
        The scene.
    stream : str
        Name of the stream, copied into every block.

    Raises
    ------
    ConfigError
        A tone or the hum fundamental is at or above the Nyquist frequency.
    """

    def __init__(self, cfg: SynthSourceConfig, stream: str):
        self.cfg = cfg
        self.stream = stream
        self.layout = StreamLayout(cfg.channels, cfg.rate)
        self.live = cfg.realtime
        self.metadata = NO_METADATA
        self.total_frames: int | None = (
            None if cfg.duration_s is None else round(cfg.duration_s * cfg.rate)
        )
        nyquist = cfg.rate / 2
        for f in cfg.tones_hz:
            if not 0 < f < nyquist:
                raise ConfigError(
                    f"tone {f:g} Hz must lie between 0 and the Nyquist frequency {nyquist:g} Hz",
                    key="source.tones_hz",
                )
        if cfg.hum_hz is not None and cfg.hum_hz >= nyquist:
            raise ConfigError(
                f"hum_hz={cfg.hum_hz:g} must be below the Nyquist frequency {nyquist:g} Hz",
                key="source.hum_hz",
            )
        self._windows = _anomaly_windows(cfg)
        self._const = self._derive()

    def _derive(self) -> _Constants:
        cfg, rate, ch = self.cfg, self.cfg.rate, self.cfg.channels
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=_CONST_KEY))

        def gains(spread_db: float) -> F64:
            g: F64 = 10 ** (-spread_db * rng.random(ch) / 20)
            g[0] = 1.0
            return g

        tones: list[tuple[float, F64, F64]] = []
        tone_peak = 10 ** (cfg.tone_level_db / 20)
        for f in cfg.tones_hz:
            tones.append((f, tone_peak * gains(1.0), rng.uniform(0, 2 * np.pi, ch)))
        if cfg.hum_hz is not None:
            base_phase = rng.uniform(0, 2 * np.pi)
            for h, db in _HUM:
                if h * cfg.hum_hz < 0.45 * rate:
                    phase = base_phase * h + rng.normal(0.0, 0.05, ch)  # nearly common
                    tones.append((h * cfg.hum_hz, 10 ** (db / 20) * gains(1.0), phase))

        # Noise filters normalised to unit output variance, started in their
        # stationary state (a warm-up run) so the level is right from sample 0.
        impulse = np.zeros(1 << 14)
        impulse[0] = 1.0
        pink_h = sp_signal.lfilter(_PINK_B, _PINK_A, impulse)
        pink_b = np.asarray(_PINK_B) / np.sqrt(np.sum(pink_h**2))
        warm = rng.standard_normal((ch, 1 << 13))
        _, pink_zi0 = sp_signal.lfilter(
            pink_b, _PINK_A, warm, axis=-1, zi=np.zeros((ch, len(_PINK_A) - 1))
        )
        leak = math.exp(-2 * math.pi * _BROWN_CORNER_HZ / rate)
        # y[n] = leak * y[n-1] + g * x[n] has variance g^2 / (1 - leak^2)
        brown_b = np.array([math.sqrt(1 - leak * leak)])
        brown_a = np.array([1.0, -leak])
        brown_zi0 = rng.standard_normal((ch, 1))

        sos_all = []
        energies = []
        tilt = math.exp(-2 * math.pi * _GLOTTAL_TILT_HZ / rate)
        for formants in _VOWELS:
            sections = [np.array([1.0 - tilt, 0.0, 0.0, 1.0, -tilt, 0.0])]
            for f, bw in zip(formants, _FORMANT_BW, strict=True):
                # formants near Nyquist (low rates) become pass-through sections
                ok = f < 0.4 * rate
                sections.append(_resonator(f, bw, rate) if ok else np.array([1.0, 0, 0, 1, 0, 0]))
            sos = np.stack(sections)
            h = sp_signal.sosfilt(sos, impulse[: max(256, round(0.1 * rate))])
            sos_all.append(sos)
            energies.append(float(np.sum(h**2)))

        click_hz = min(_CLICK_HZ, 0.3 * rate)
        t = np.arange(max(2, round(8 * _CLICK_TAU_S * rate))) / rate
        kernel = _CLICK_PEAK * np.exp(-t / _CLICK_TAU_S) * np.cos(2 * np.pi * click_hz * t)

        return _Constants(
            tones=tones,
            noise_amp=np.full((ch, 1), 10 ** (cfg.noise_level_db / 20)),
            pink_b=pink_b,
            pink_zi0=pink_zi0,
            brown_b=brown_b,
            brown_a=brown_a,
            brown_zi0=brown_zi0,
            speech_sos=np.stack(sos_all),
            vowel_energy=tuple(energies),
            speech_gain=gains(1.0),
            anomaly_gain=gains(1.0),
            whistle_hz=min(_WHISTLE_HZ, 0.2 * rate),
            whistle_fade=max(1.0, _WHISTLE_FADE_S * rate),
            click_kernel=kernel,
            period=round(cfg.anomaly_period_s * rate),
        )

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        """Yield the scene from its first sample, in blocks of ``block_size`` frames.

        Parameters
        ----------
        block_size : int
            Frames per block (>= 1); the last block of a finite scene may be shorter.
        stop : threading.Event
            Ends the iteration (promptly, even while pacing) once set.

        Yields
        ------
        Block
            Fresh float32 arrays of shape (channels, frames), ``seq`` 0, 1, 2, ...
            and ``t0`` counting frames; paced at real time when ``cfg.realtime``.

        Raises
        ------
        ValueError
            ``block_size`` < 1.
        """
        if block_size < 1:
            raise ValueError(f"{block_size=} must be >= 1")
        scene = _Scene(self)
        pacer = Pacer(self.cfg.rate, stop, realtime=self.cfg.realtime)
        seg = np.zeros((self.cfg.channels, 0), dtype=np.float32)
        pos = 0  # next unserved frame of seg
        t0 = 0
        seq = 0
        total = self.total_frames
        while not stop.is_set():
            n = block_size if total is None else min(block_size, total - t0)
            if n <= 0:
                return
            samples = np.empty((self.cfg.channels, n), dtype=np.float32)
            filled = 0
            while filled < n:
                if pos == seg.shape[1]:
                    seg, pos = scene.next_segment(), 0
                take = min(n - filled, seg.shape[1] - pos)
                # COPY: each block owns its buffer; it is handed to another thread
                samples[:, filled : filled + take] = seg[:, pos : pos + take]
                filled += take
                pos += take
            captured_ns = pacer.wait_for(t0 + n)
            if stop.is_set():
                return
            yield Block(samples, self.stream, seq, t0, self.cfg.rate, captured_ns)
            seq += 1
            t0 += n

    def health(self) -> dict[str, Any]:
        """A generated scene has no state to report."""
        return {}

    def close(self) -> None:
        """Nothing to release."""
