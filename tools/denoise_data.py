"""Speech and noise made on this machine, mixed into (noisy, clean) pairs for the denoiser.

No data set can be downloaded here, so the training and evaluation material is made:

- **Speech.** espeak-ng (many voices, variants, rates and pitches) reading sentences
  taken from the licence texts every Debian system carries, and the real recorded
  English prompts of Debian's ``asterisk-core-sounds-en-g722`` (one speaker, 16 kHz
  G.722, decoded with ffmpeg).
- **Noise**, generated in families: white, pink, brown, mains hum with harmonics,
  babble (several talkers of the same split), fans, engines, impulsive clicks and
  traffic-like rumble, each with random parameters and a random colouring.

Splits never share material: evaluation holds out whole speakers (espeak voices and
variants), texts (sentences, by a hash of their words), asterisk prompts (by a hash of
the file name) and noise seeds (a disjoint seed space). `training_mixtures` draws
fresh mixtures for ever; `evaluation_set` is a fixed list of them.

The corpus (speech only) is cached in ``--data`` (default ``.cache/denoise``) so that
training and evaluation do not re-synthesise it: about a minute to build the first time.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.signal as sp_signal
import soundfile as sf

RATE = 16000
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Split = Literal["train", "eval"]

LICENCES = Path("/usr/share/common-licenses")
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
DEFAULT_DATA = Path(".cache/denoise")

# espeak-ng speakers: a base voice and a variant. Evaluation holds out two voices and
# three variants: no held-out voice or variant is ever heard in training.
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
          "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "croak", "Andy", "Annie", "Denis", "Gene")
EVAL_VOICES = frozenset({"en-029", "en-us-nyc"})
EVAL_VARIANTS = frozenset({"m3", "f4", "Annie"})

NOISE_FAMILIES = ("white", "pink", "brown", "hum", "babble", "fan", "engine", "clicks",
                  "traffic")
EVAL_SEED_BASE = 1_000_003  # evaluation noise seeds start here; training's stay below


def _split_of(key: str, eval_share: int = 5) -> Split:
    """A stable split from a string: one in ``eval_share`` goes to evaluation."""
    digest = hashlib.sha256(key.encode()).digest()
    return "eval" if digest[0] % eval_share == 0 else "train"


def sentences(split: Split) -> list[str]:
    """Sentences of 5-30 words from the system's licence texts, those of one split."""
    out: list[str] = []
    seen: set[str] = set()
    for path in sorted(LICENCES.glob("*")):
        if not path.is_file():
            continue
        text = re.sub(r"\s+", " ", path.read_text(errors="replace"))
        for raw in re.split(r"(?<=[.;:!?])\s+", text):
            s = re.sub(r"[^A-Za-z0-9,'\- .;:!?]", "", raw).strip()
            words = s.split()
            key = " ".join(w.lower() for w in words)
            if not 5 <= len(words) <= 30 or key in seen:
                continue
            seen.add(key)
            if _split_of(key) == split:
                out.append(s)
    return out


def speakers(split: Split) -> list[tuple[str, str]]:
    """(voice, variant) pairs of one split."""
    pairs = [(v, var) for v in VOICES for var in VARIANTS]
    if split == "eval":
        return [p for p in pairs if p[0] in EVAL_VOICES and p[1] in EVAL_VARIANTS]
    return [p for p in pairs if p[0] not in EVAL_VOICES and p[1] not in EVAL_VARIANTS]


def espeak(text: str, voice: str, variant: str, wpm: int, pitch: int) -> F32:
    """One utterance from espeak-ng at 16 kHz (its 22.05 kHz output, resampled)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    wav = subprocess.run(
        ["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(wpm), "-p", str(pitch),
         "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float64")
    y = sp_signal.resample_poly(x, RATE, rate) if rate != RATE else x
    return np.asarray(y, dtype=np.float32)


def asterisk_prompts(split: Split) -> list[Path]:
    """The recorded prompts of one split (empty if the package is not installed)."""
    if not ASTERISK.is_dir():
        return []
    return [p for p in sorted(ASTERISK.rglob("*.g722")) if _split_of(p.stem) == split]


def decode(path: Path) -> F32:
    """A recording decoded by ffmpeg to 16 kHz mono float32."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed (Debian package ffmpeg)")
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar",
         str(RATE), "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def _trim(x: F32, floor_db: float = -45.0) -> F32:
    """The utterance without its leading and trailing silence (20 ms frames)."""
    frame = RATE // 50
    n = len(x) // frame
    if n == 0:
        return x
    energy = (x[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (floor_db / 10))
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def _normalise(x: F32) -> F32:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return (x / max(rms, 1e-9) * 0.1).astype(np.float32)


@dataclass(frozen=True)
class Corpus:
    """Clean utterances of one split, each trimmed and at an RMS of 0.1."""

    split: Split
    utterances: list[F32]
    sources: list[str]  # "espeak:voice+variant" or "asterisk:name", one per utterance

    @property
    def seconds(self) -> float:
        return sum(len(u) for u in self.utterances) / RATE


def build_corpus(split: Split, *, espeak_count: int, seed: int = 0) -> Corpus:
    """Synthesise ``espeak_count`` utterances and decode every asterisk prompt of ``split``."""
    rng = np.random.default_rng(seed + (0 if split == "train" else 7))
    texts = sentences(split)
    spk = speakers(split)
    jobs = []
    for _ in range(espeak_count):
        voice, variant = spk[rng.integers(len(spk))]
        text = texts[rng.integers(len(texts))]
        jobs.append((text, voice, variant, int(rng.integers(120, 220)), int(rng.integers(20, 80))))
    prompts = asterisk_prompts(split)
    utterances: list[F32] = []
    sources: list[str] = []
    with ThreadPoolExecutor(4) as pool:  # the work is in espeak-ng and ffmpeg processes
        for job, x in zip(jobs, pool.map(lambda j: espeak(*j), jobs), strict=True):
            utterances.append(_normalise(_trim(x)))
            sources.append(f"espeak:{job[1]}+{job[2]}")
        for path, x in zip(prompts, pool.map(decode, prompts), strict=True):
            x = _trim(x)
            if len(x) >= RATE // 4:
                utterances.append(_normalise(x))
                sources.append(f"asterisk:{path.stem}")
    return Corpus(split, utterances, sources)


def load_corpus(split: Split, data: Path = DEFAULT_DATA, *, espeak_count: int | None = None,
                seed: int = 0) -> Corpus:
    """The cached corpus of ``split``, built (and cached) on first use."""
    count = espeak_count if espeak_count is not None else (1500 if split == "train" else 150)
    path = data / f"speech-{split}-{count}-{seed}.npz"
    if path.exists():
        with np.load(path) as z:
            lengths = z["lengths"]
            flat = z["samples"]
            sources = [str(s) for s in z["sources"]]
        edges = np.concatenate(([0], np.cumsum(lengths)))
        utt = [flat[a:b] for a, b in itertools.pairwise(edges)]
        return Corpus(split, utt, sources)
    corpus = build_corpus(split, espeak_count=count, seed=seed)
    data.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=np.concatenate(corpus.utterances),
             lengths=np.array([len(u) for u in corpus.utterances]),
             sources=np.array(corpus.sources))
    return corpus


# --- noise -----------------------------------------------------------------------------


def _shaped(n: int, rng: np.random.Generator, exponent: float) -> F64:
    """Gaussian noise with a power spectrum falling as f**-exponent (above 20 Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec *= np.maximum(f, 20.0) ** (-exponent / 2)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def _harmonics(n: int, rng: np.random.Generator, f0: F64 | float, count: int,
               decay: float) -> F64:
    """A harmonic series on a (possibly drifting) fundamental, random phases."""
    f0_t = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f0_t) / RATE
    out = np.zeros(n)
    for k in range(1, count + 1):
        if k * f0_t.max() >= RATE / 2 - 200:
            break
        out += rng.uniform(0.3, 1.0) * decay ** (k - 1) * np.sin(k * phase + rng.uniform(0, 6.3))
    return out


def _slow(n: int, rng: np.random.Generator, hz: float) -> F64:
    """A smooth random curve around 0 with variations at about ``hz``."""
    knots = max(4, int(n / RATE * hz) + 3)
    return np.interp(np.arange(n), np.linspace(0, n, knots), rng.standard_normal(knots))


def make_noise(family: str, n: int, rng: np.random.Generator,
               talkers: Corpus | None = None) -> F64:
    """``n`` samples of one noise family at 16 kHz, unit RMS, randomly coloured."""
    if family == "white":
        x = rng.standard_normal(n)
    elif family == "pink":
        x = _shaped(n, rng, 1.0)
    elif family == "brown":
        x = _shaped(n, rng, 2.0)
    elif family == "hum":
        mains = rng.choice([50.0, 60.0]) * (1 + 0.002 * _slow(n, rng, 0.5))
        x = _harmonics(n, rng, mains, 40, rng.uniform(0.6, 0.9)) + 0.05 * rng.standard_normal(n)
    elif family == "babble":
        if talkers is None or not talkers.utterances:
            raise ValueError("babble needs a corpus of talkers")
        x = np.zeros(n)
        for _ in range(int(rng.integers(4, 9))):
            pos = 0
            while pos < n:
                u = talkers.utterances[rng.integers(len(talkers.utterances))]
                take = min(len(u), n - pos)
                x[pos : pos + take] += u[:take]
                pos += take + int(rng.integers(0, RATE // 4))
    elif family == "fan":
        b, a = sp_signal.butter(2, sorted(rng.uniform(100, 4000, 2)) + np.array([0, 300]),
                                btype="bandpass", fs=RATE)
        blade = rng.uniform(20, 200)
        x = sp_signal.lfilter(b, a, rng.standard_normal(n)) * 3
        x += _harmonics(n, rng, blade, 12, 0.7) * (1 + 0.3 * _slow(n, rng, 2))
    elif family == "engine":
        rpm = rng.uniform(30, 120) * (1 + 0.15 * _slow(n, rng, 0.3))
        b, a = sp_signal.butter(2, rng.uniform(300, 1500), fs=RATE)
        x = _harmonics(n, rng, rpm, 60, rng.uniform(0.85, 0.97))
        x += 0.5 * sp_signal.lfilter(b, a, rng.standard_normal(n)) * 4
    elif family == "clicks":
        x = 0.02 * rng.standard_normal(n)
        times = np.flatnonzero(rng.random(n) < rng.uniform(2, 30) / RATE)
        for t in times:
            length = int(rng.integers(40, 400))
            f = rng.uniform(500, 6000)
            tt = np.arange(min(length, n - int(t))) / RATE
            x[t : t + len(tt)] += (rng.uniform(0.5, 3) * np.exp(-tt * rng.uniform(200, 2000))
                                   * np.sin(2 * np.pi * f * tt))
    elif family == "traffic":
        x = _shaped(n, rng, 2.0) * np.exp(1.2 * _slow(n, rng, 0.2))
        b, a = sp_signal.butter(2, rng.uniform(200, 1200), fs=RATE)
        x = sp_signal.lfilter(b, a, x) + 0.05 * _shaped(n, rng, 1.0)
    else:
        raise ValueError(f"unknown noise family {family!r}")
    x = _colour(x, rng)
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _colour(x: F64, rng: np.random.Generator, max_db: float = 6.0) -> F64:
    """A random gentle EQ: a spectral tilt and one peak, each within ``max_db``."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    octaves = np.log2(np.maximum(f, 50.0) / 1000.0)
    db = rng.uniform(-max_db, max_db) / 4 * octaves
    centre = rng.uniform(np.log2(100), np.log2(6000))
    db += rng.uniform(-max_db, max_db) * np.exp(-0.5 * ((np.log2(np.maximum(f, 1)) - centre)
                                                        / rng.uniform(0.3, 1.5)) ** 2)
    return np.fft.irfft(spec * 10 ** (db / 20), len(x))


# --- mixtures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """One (noisy, clean) pair at 16 kHz; ``noisy = clean + noise``, float32."""

    clean: F32
    noisy: F32
    snr_db: float
    family: str
    source: str


def _speech_track(corpus: Corpus, n: int, rng: np.random.Generator) -> tuple[F64, str]:
    """``n`` samples of utterances with pauses between them, randomly coloured."""
    x = np.zeros(n)
    pos = int(rng.integers(0, RATE // 2))
    first = ""
    while pos < n:
        i = int(rng.integers(len(corpus.utterances)))
        u = corpus.utterances[i]
        take = min(len(u), n - pos)
        x[pos : pos + take] = u[:take]
        first = first or corpus.sources[i]
        pos += take + int(rng.integers(RATE // 10, RATE))
    return _colour(x, rng, 3.0), first


def _recorded(noises: list[F32], n: int, rng: np.random.Generator) -> F64:
    """``n`` samples of a random recording from a random place (looped if short), unit RMS."""
    rec = noises[rng.integers(len(noises))].astype(np.float64)
    start = int(rng.integers(len(rec)))
    x = np.resize(np.roll(rec, -start), n)
    return _colour(x, rng) / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def mixture(corpus: Corpus, seconds: float, rng: np.random.Generator,
            snr_range: tuple[float, float] = (-5.0, 20.0), family: str | None = None,
            noises: list[F32] | None = None) -> Mixture:
    """One mixture: speech at a random level plus a noise family at an SNR in ``snr_range``.

    With ``noises`` (recordings), half of the mixtures take one of them (family
    ``"recorded"``) instead of a generated family. The SNR is over the whole clip
    (speech power where speech is active against the noise's). The level is random
    between -40 and -12 dBFS RMS for the mixture.
    """
    n = int(seconds * RATE)
    clean, source = _speech_track(corpus, n, rng)
    if family is None and noises and rng.random() < 0.5:
        fam, noise = "recorded", _recorded(noises, n, rng)
    else:
        fam = family or NOISE_FAMILIES[rng.integers(len(NOISE_FAMILIES))]
        noise = make_noise(fam, n, rng, talkers=corpus)
    snr = float(rng.uniform(*snr_range))
    active = np.abs(clean) > 1e-4
    p_speech = float(np.mean(clean[active] ** 2)) if active.any() else 1e-4
    noise *= np.sqrt(p_speech / 10 ** (snr / 10))
    noisy = clean + noise
    level = 10 ** (rng.uniform(-40, -12) / 20) / max(float(np.sqrt(np.mean(noisy**2))), 1e-12)
    scale = min(level, 0.95 / max(float(np.abs(noisy).max()), 1e-12))
    return Mixture((clean * scale).astype(np.float32), (noisy * scale).astype(np.float32),
                   snr, fam, source)


def training_mixtures(corpus: Corpus, seconds: float, seed: int,
                      noises: list[F32] | None = None) -> Iterator[Mixture]:
    """Fresh training mixtures for ever, from noise seeds below `EVAL_SEED_BASE`."""
    if seed >= EVAL_SEED_BASE:
        raise ValueError("training seeds must stay below the evaluation seed space")
    rng = np.random.default_rng(seed)
    while True:
        yield mixture(corpus, seconds, rng, noises=noises)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def read_folder(folder: Path) -> list[tuple[str, F32]]:
    """Every recording under ``folder``, mono (channels averaged), resampled to 16 kHz.

    Raises
    ------
    ValueError
        The folder holds no recording.
    """
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        x, rate = sf.read(path, dtype="float64", always_2d=True)
        mono = x.mean(axis=1)
        if rate != RATE:
            g = math.gcd(int(rate), RATE)
            mono = sp_signal.resample_poly(mono, RATE // g, int(rate) // g)
        out.append((path.stem, np.asarray(mono, dtype=np.float32)))
    if not out:
        raise ValueError(f"no recordings ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    return out


def corpus_from_dir(folder: Path) -> Corpus:
    """A user's clean recordings as a training corpus (trimmed, normalised)."""
    pairs = [(name, _trim(x)) for name, x in read_folder(folder)]
    kept = [(name, x) for name, x in pairs if len(x) >= RATE // 4]
    return Corpus("train", [_normalise(x) for _, x in kept], [f"file:{n}" for n, _ in kept])


def noises_from_dir(folder: Path) -> list[F32]:
    """A user's noise recordings, whole."""
    return [x for _, x in read_folder(folder) if len(x) > 0]


def evaluation_set(corpus: Corpus, count: int = 180, seconds: float = 4.0,
                   seed: int = 0) -> list[Mixture]:
    """A fixed held-out set: every noise family equally, SNRs spread over -5..20 dB."""
    if corpus.split != "eval":
        raise ValueError("evaluate on the held-out corpus only")
    rng = np.random.default_rng(EVAL_SEED_BASE + seed)
    out = []
    for i in range(count):
        fam = NOISE_FAMILIES[i % len(NOISE_FAMILIES)]
        lo = -5.0 + 25.0 * (i // len(NOISE_FAMILIES)) / max(1, count // len(NOISE_FAMILIES))
        out.append(mixture(corpus, seconds, rng, (lo, lo + 25.0 / max(1, count // 9)), fam))
    return out
