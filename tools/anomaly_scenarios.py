"""Seeded machine-sound scenarios for the anomaly detector's evaluation and training.

A machine is hum (a fundamental and its harmonics) over a coloured noise floor
that also rings a structural resonance; audio at 16/44.1/48 kHz or vibration at
10 kHz. A scenario is a clip of it holding one anomaly (or none): a new tone, a
bearing-like impulse train, a broadband burst, irregular clicks, a dropout, a
gain step in one band, and, for a known machine, a harmonic rising or the
speed changing. Backgrounds are clean (stationary) or drifting (slow level,
colour and speed changes, as a machine under varying load).

``DEMO_PUMP`` is one fixed machine at 16 kHz: the demo for the learned detector
(``tools/train_anomaly.py`` trains on its normal operation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import scipy.signal as sp_signal

F64 = npt.NDArray[np.float64]

ANOMALY_TYPES = ("tone", "bearing", "burst", "clicks", "dropout", "band_gain")
MACHINE_TYPES = ("harmonic", "speed")  # need a known machine: the demo pump's evaluation
KINDS = (*ANOMALY_TYPES, *MACHINE_TYPES, "clean", "drift")
RATES = (16_000, 44_100, 48_000, 10_000)  # the last is vibration
N_HARMONICS = 8


@dataclass(frozen=True)
class Machine:
    """What makes one machine sound like itself."""

    f0: float  # fundamental, Hz
    amps: tuple[float, ...]  # amplitude of harmonics 1..N_HARMONICS (0 above the band)
    phases: tuple[float, ...]
    floor: float  # noise floor RMS
    pole: float  # one-pole tilt of the floor, 0 (white) .. 0.9 (dark)
    resonance_hz: float  # a structural resonance the floor excites

    @classmethod
    def draw(cls, rng: np.random.Generator, rate: int) -> Machine:
        vib = rate == 10_000
        f0 = float(rng.uniform(20, 60) if vib else rng.choice([50.0, 60.0, rng.uniform(80, 160)]))
        amps, phases = [], []
        for h in range(1, N_HARMONICS + 1):
            amp = 0.1 * rng.uniform(0.3, 1.0) / h ** rng.uniform(0.5, 1.2)
            amps.append(amp if h * f0 * 1.02 < 0.45 * rate else 0.0)
            phases.append(float(rng.uniform(0, 6.3)))
        return cls(
            f0,
            tuple(amps),
            tuple(phases),
            floor=10 ** (rng.uniform(-50, -38) / 20),
            pole=float(rng.uniform(0.0, 0.9)),
            resonance_hz=float(rng.uniform(0.1, 0.3) * rate),
        )


DEMO_RATE = 16_000
DEMO_PUMP = Machine(
    f0=37.5,  # 2250 rpm
    amps=(0.1, 0.06, 0.035, 0.02, 0.03, 0.012, 0.008, 0.006),
    phases=(0.3, 1.9, 4.0, 2.2, 5.1, 0.7, 3.3, 1.2),
    floor=10 ** (-44 / 20),
    pole=0.6,
    resonance_hz=2200.0,
)


@dataclass
class Scenario:
    """One seeded clip: its signal and where its anomaly lies (none for backgrounds)."""

    name: str
    kind: str  # an anomaly type, "clean" or "drift"
    rate: int
    x: npt.NDArray[np.float32]  # (1, samples)
    truth: tuple[float, float] | None


def hum(m: Machine, rate: int, speed: F64) -> F64:
    """The harmonics of ``m`` with the speed (1 = nominal) per sample."""
    phase = 2 * np.pi * np.cumsum(m.f0 * speed) / rate
    x = np.zeros(speed.size)
    for h, (amp, ph) in enumerate(zip(m.amps, m.phases, strict=True), start=1):
        if amp:
            x += amp * np.sin(h * phase + ph)
    return x


def render(m: Machine, rng: np.random.Generator, rate: int, n: int, drift: bool) -> F64:
    """``n`` samples of machine ``m``; with ``drift``, speed (+-1 %), level (+-4 dB) and colour
    wander over minutes."""
    t = np.arange(n) / rate
    speed = np.ones(n)
    level = np.ones(n)
    if drift:
        speed = 1 + 0.01 * np.sin(2 * np.pi * t / rng.uniform(60, 150) + rng.uniform(0, 6.3))
        level_db = 4 * np.sin(2 * np.pi * t / rng.uniform(40, 120) + rng.uniform(0, 6.3))
        level = 10 ** (level_db / 20)
    x = hum(m, rate, speed)
    white = rng.standard_normal(n)
    tinted = sp_signal.lfilter([1 - m.pole], [1, -m.pole], white)
    tinted *= np.std(white) / np.std(tinted)
    if drift:
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * t / rng.uniform(50, 130) + rng.uniform(0, 6.3))
        noise = mix * tinted + (1 - mix) * white
    else:
        noise = tinted
    b, a = sp_signal.iirpeak(m.resonance_hz, 8.0, fs=rate)
    noise += 2.0 * sp_signal.lfilter(b, a, white)
    x += m.floor * noise
    out: F64 = x * level
    return out


def _impulse(rng: np.random.Generator, rate: int, f_res: float, tau_s: float) -> F64:
    t = np.arange(max(4, round(8 * tau_s * rate))) / rate
    k: F64 = np.exp(-t / tau_s) * np.sin(2 * np.pi * f_res * t + rng.uniform(0, 6.3))
    k /= np.abs(k).max()
    return k


def make_scenario(
    kind: str, seed: int, rate: int, seconds: float, machine: Machine | None = None
) -> Scenario:
    """A seeded clip of ``seconds`` at ``rate`` Hz holding one anomaly of ``kind`` (or none),
    on ``machine`` (default: one drawn from the seed)."""
    rng = np.random.default_rng([seed, RATES.index(rate), KINDS.index(kind)])
    n = round(seconds * rate)
    m = Machine.draw(rng, rate) if machine is None else machine
    if kind in MACHINE_TYPES and machine is None:
        raise ValueError(f"{kind!r} anomalies need a known machine")
    x = render(m, rng, rate, n, drift=kind == "drift")
    rms = float(np.sqrt(np.mean(x**2)))
    truth: tuple[float, float] | None = None
    if kind not in ("clean", "drift"):
        start = rng.uniform(5.0, seconds - 4.0)
        dur = rng.uniform(0.5, 2.0)
        a, b = round(start * rate), round((start + dur) * rate)
        truth = (a / rate, b / rate)
        _add_anomaly(kind, x, m, rng, rate, a, b, rms)
    return Scenario(f"{kind}-{rate}-{seed}", kind, rate, x.astype(np.float32)[None, :], truth)


def _add_anomaly(
    kind: str, x: F64, m: Machine, rng: np.random.Generator, rate: int, a: int, b: int, rms: float
) -> None:
    seg = slice(a, b)
    n = x.size
    t = np.arange(b - a) / rate
    dur = (b - a) / rate
    fade = np.minimum(1, np.minimum(t, t[::-1]) / 0.01)
    if kind == "tone":
        f = rng.uniform(400, 0.4 * rate)
        # 3-12 dB above the noise floor's level in a 100 Hz band around it.
        floor_rms = 10 ** (rng.uniform(-50, -38) / 20)
        amp = floor_rms * 10 ** (rng.uniform(3, 12) / 20) * math.sqrt(2)
        x[seg] += amp * np.minimum(1, np.minimum(t, t[::-1]) / 0.005) * np.sin(2 * np.pi * f * t)
    elif kind in ("bearing", "clicks"):
        f_res = rng.uniform(0.15, 0.35) * rate
        kern = _impulse(rng, rate, f_res, rng.uniform(0.0005, 0.002))
        if kind == "bearing":  # a periodic train at a characteristic frequency
            rep = rng.uniform(5, 40)
            times = np.arange(0, dur, 1 / rep) * (1 + 0.01 * rng.standard_normal())
        else:  # a few irregular clicks
            times = np.sort(rng.uniform(0, dur, int(rng.integers(3, 9))))
            times[0] = 0.0
        peak = rms * rng.uniform(0.5, 2.0)
        for ts in times:
            i = a + round(ts * rate)
            j = min(n, i + kern.size)
            x[i:j] += peak * rng.uniform(0.7, 1.0) * kern[: j - i]
    elif kind == "burst":
        x[seg] += rng.standard_normal(b - a) * rms * 10 ** (rng.uniform(-12, -3) / 20)
    elif kind == "dropout":
        x[seg] *= 10 ** (-rng.uniform(30, 60) / 20)
    elif kind == "band_gain":
        fc = rng.uniform(300, 0.3 * rate)
        sos = sp_signal.butter(
            4, [fc / math.sqrt(2), fc * math.sqrt(2)], "bandpass", fs=rate, output="sos"
        )
        gain = 10 ** (rng.uniform(10, 15) / 20)
        x[seg] += (gain - 1) * fade * sp_signal.sosfilt(sos, x)[seg]
    elif kind == "harmonic":  # one harmonic (2nd-5th: looseness, misalignment) rises 6-10 dB
        h = int(rng.integers(2, 6))
        only = replace(m, amps=tuple(amp if i == h else 0.0 for i, amp in enumerate(m.amps, 1)))
        gain = 10 ** (rng.uniform(6, 10) / 20)
        x[seg] += (gain - 1) * fade * hum(only, rate, np.ones(n))[seg]
    elif kind == "speed":  # the machine runs 3-6 % fast: every harmonic moves
        speed = np.ones(n)
        speed[seg] += rng.uniform(0.03, 0.06)
        # Cross-faded in and out (the faster hum's phase runs ahead of the normal one's).
        x[seg] += fade * (hum(m, rate, speed) - hum(m, rate, np.ones(n)))[seg]
    else:
        raise ValueError(kind)
