"""Evaluate the anomaly stage on seeded machine-sound scenarios against two baselines.

Each anomaly scenario is a steady machine (hum with harmonics over a noise floor,
audio at 16/44.1/48 kHz or vibration at 10 kHz) holding exactly one anomaly: a
new tone, a bearing-like impulse train, a broadband burst, irregular clicks, a
dropout or a gain step in one band. Background scenarios hold none: clean
(stationary) or drifting (slow level, colour and speed drift), long enough to
count false alarms per hour. Every scenario runs block by block (256 frames)
through `AnomalyStage` and two baselines:

- ``rms``: frame RMS level against an exponentially weighted baseline, an event
  when it moves by more than a threshold in dB either way;
- ``hst``: river's HalfSpaceTrees over the same log band energies (min-max
  scaled), an event when its score passes a threshold (skipped without river).

Both baselines use the same STFT frames, warm-up and `EventTracker` as the
stage, and each gets the threshold (from a small grid) that gives it its best
F1 on this very data, which favours them.

Scoring, per event: a truth anomaly [start, end] is detected when an onset is
emitted (its ``detected_s``, the time the deciding frame completed) within
[start - 50 ms, end]; delay is the first such onset minus start. Onsets outside
every [start - 50 ms, end + 250 ms] are false alarms (also on the anomaly
clips). Precision = detected / (detected + false alarms).

Run: ``.venv/bin/python tools/eval_anomaly.py`` (about 2-3 minutes on 2 cores);
writes ``results.csv``, ``results.md`` and ``per_type.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from anomaly_scenarios import (
    ANOMALY_TYPES,
    DEMO_PUMP,
    DEMO_RATE,
    MACHINE_TYPES,
    RATES,
    Scenario,
    make_scenario,
)

from streamer.block import Block, StreamLayout
from streamer.config import AnomalyConfig
from streamer.dsp.stft import StreamingSTFT
from streamer.stages.anomaly import AnomalyStage, EventTracker

F64 = npt.NDArray[np.float64]

EXPECTED = {  # the detector label that names each anomaly correctly
    "tone": {"tonal"},
    "bearing": {"impulsive"},
    "burst": {"broadband", "band_level"},
    "clicks": {"impulsive"},
    "dropout": {"dropout"},
    "band_gain": {"band_level", "broadband"},
    "harmonic": {"tonal", "band_level", "learned"},
    "speed": {"tonal", "band_level", "broadband", "learned"},
}
BLOCK = 256
TOL_BEFORE_S = 0.05
TAIL_S = 0.25
WARMUP_S = 2.0
RMS_GRID_DB = (3.0, 4.5, 6.0, 9.0, 12.0)
HST_GRID = (0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


@dataclass
class Result:
    """Onset times per detector for one scenario, and the stage's labels."""

    name: str
    kind: str
    rate: int
    seconds: float
    truth: tuple[float, float] | None
    onsets: dict[str, list[float]] = field(default_factory=dict)
    labels: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # per stage
    seconds_run: float = 0.0  # of the first stage


# ----------------------------------------------------------------- detectors


def _blocks(x: npt.NDArray[np.float32], rate: int) -> list[Block]:
    return [
        Block(np.ascontiguousarray(x[:, i : i + BLOCK]), "eval", s, i, rate, 0)
        for s, i in enumerate(range(0, x.shape[1], BLOCK))
    ]


def _run_stage(sc: Scenario, cfg: AnomalyConfig) -> tuple[list[float], list[tuple[float, str]]]:
    stage = AnomalyStage(cfg, StreamLayout(1, sc.rate))
    times, labels = [], []
    for block in _blocks(sc.x, sc.rate):
        for ann in stage.process(block).annotations:
            if ann.kind == "anomaly" and ann.fields["state"] == "onset":
                times.append(float(ann.fields["detected_s"]))
                labels.append((float(ann.fields["detected_s"]), str(ann.fields["detector"])))
    return times, labels


def _frame_features(sc: Scenario) -> tuple[F64, F64, float, int]:
    """Per STFT frame: RMS level (dB) and log band energies; frame rate; frames in warm-up."""
    cfg = AnomalyConfig()
    stage = AnomalyStage(cfg, StreamLayout(1, sc.rate))  # for its frame sizes and bands
    stft = StreamingSTFT(stage.n_fft, stage.hop, 1, "hann")
    mat = stage._band_mat
    levels, bands = [], []
    for block in _blocks(sc.x, sc.rate):
        spec, raw = stft.process_frames(block.samples)
        if spec.shape[1]:
            p = np.abs(spec[0]) ** 2
            levels.append(10 * np.log10(np.mean(raw[0] ** 2, axis=1) + 1e-12))
            bands.append(10 * np.log10(p @ mat + 1e-10))
    frame_rate = sc.rate / stage.hop
    warm = math.ceil(WARMUP_S * frame_rate)
    return np.concatenate(levels), np.concatenate(bands), frame_rate, warm


def _track(scores: F64, frame_end_s: F64, warm: int, frame_rate: float, on: float) -> list[float]:
    """Onset times (s) from a normalised score sequence, with the stage's event logic."""
    cfg = AnomalyConfig()
    tracker = EventTracker(
        on,
        on * cfg.off_threshold / cfg.on_threshold,
        math.ceil(cfg.min_duration_s * frame_rate - 1e-9),
        math.ceil(cfg.merge_gap_s * frame_rate - 1e-9),
        round(cfg.refractory_s * frame_rate),
    )
    out = []
    for k in range(warm, scores.size):
        if tracker.step(k, float(scores[k])) == "onset":
            out.append(float(frame_end_s[k]))
    return out


def _rms_scores(levels: F64, frame_rate: float, warm: int) -> F64:
    """|level - baseline| in dB; the baseline (EW mean, tau 10 s) learns outside large moves."""
    alpha = 1 / (10.0 * frame_rate)
    mu = float(levels[:warm].mean())
    out = np.zeros(levels.size)
    for k, v in enumerate(levels):
        d = abs(v - mu)
        out[k] = d
        if k < warm:
            mu += (v - mu) / (k + 1)
        elif d < min(RMS_GRID_DB) * 0.6:
            mu += alpha * (v - mu)
    return out


def _hst_scores(bands: F64, warm: int) -> F64 | None:
    try:
        from river import anomaly, compose, preprocessing
    except ImportError:
        return None
    model = compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.HalfSpaceTrees(n_trees=15, height=8, window_size=100, seed=42),
    )
    out = np.zeros(bands.shape[0])
    step = 4  # one feature vector per 4 hops (~21 ms); scores held in between
    last = 0.0
    for k in range(0, bands.shape[0]):
        if k % step == 0:
            x = {f"b{i}": float(v) for i, v in enumerate(bands[k])}
            last = float(model.score_one(x))
            model.learn_one(x)
        out[k] = last if k >= warm else 0.0
    return out


# kind, seed, rate, seconds, with_hst, demo machine, {stage name: AnomalyConfig fields}
Job = tuple[str, int, int, float, bool, bool, dict[str, dict[str, object]]]


def run_scenario(job: Job) -> Result:
    """Generate one scenario and run every detector on it."""
    kind, seed, rate, seconds, with_hst, demo, stages = job
    sc = make_scenario(kind, seed, rate, seconds, DEMO_PUMP if demo else None)
    res = Result(sc.name, kind, rate, seconds, sc.truth)
    for i, (name, fields) in enumerate(stages.items()):
        started = time.perf_counter()
        res.onsets[name], res.labels[name] = _run_stage(sc, AnomalyConfig.model_validate(fields))
        if i == 0:
            res.seconds_run = time.perf_counter() - started
    levels, bands, frame_rate, warm = _frame_features(sc)
    stage = AnomalyStage(AnomalyConfig(), StreamLayout(1, rate))
    ends = (np.arange(levels.size) * stage.hop + stage.n_fft) / rate
    rms = _rms_scores(levels, frame_rate, warm)
    for th in RMS_GRID_DB:
        res.onsets[f"rms@{th:g}dB"] = _track(rms, ends, warm, frame_rate, th)
    if with_hst:
        hst = _hst_scores(bands, warm)
        if hst is not None:
            for th in HST_GRID:
                res.onsets[f"hst@{th:g}"] = _track(hst, ends, warm, frame_rate, th)
    return res


# ------------------------------------------------------------------- scoring


@dataclass
class Score:
    detector: str
    f1: float
    precision: float
    recall: float
    delay_median_ms: float
    delay_p90_ms: float
    fa_per_hour_clean: float
    fa_per_hour_drift: float
    false_alarms: int


def score(results: Sequence[Result], detector: str) -> Score:
    """Event-level precision, recall, F1, delay and false alarms of one detector."""
    tp = fp = truths = 0
    delays: list[float] = []
    fa = {"clean": 0, "drift": 0}
    hours = {"clean": 0.0, "drift": 0.0}
    for r in results:
        times = r.onsets[detector]
        if r.truth is None:
            fa[r.kind] += len(times)
            hours[r.kind] += r.seconds / 3600
            fp += len(times)
            continue
        a, b = r.truth
        truths += 1
        hits = [t for t in times if a - TOL_BEFORE_S <= t <= b]
        if hits:
            tp += 1
            delays.append(min(hits) - a)
        fp += sum(1 for t in times if not a - TOL_BEFORE_S <= t <= b + TAIL_S)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / truths if truths else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    d = np.array(delays) * 1000 if delays else np.array([math.nan])
    return Score(
        detector,
        f1,
        precision,
        recall,
        float(np.median(d)),
        float(np.percentile(d, 90)),
        fa["clean"] / hours["clean"] if hours["clean"] else math.nan,
        fa["drift"] / hours["drift"] if hours["drift"] else math.nan,
        fp,
    )


def best_of(results: Sequence[Result], prefix: str) -> Score | None:
    """The threshold of a baseline with the best F1 (ties: fewer false alarms)."""
    names = [k for k in results[0].onsets if k.startswith(prefix + "@")]
    if not names:
        return None
    scores = [score(results, n) for n in names]
    return max(scores, key=lambda s: (s.f1, -s.false_alarms))


def table(rows: Sequence[Score]) -> list[list[str]]:
    out = [
        [
            "detector",
            "F1",
            "precision",
            "recall",
            "median delay ms",
            "p90 delay ms",
            "FA/h clean",
            "FA/h drift",
        ]
    ]
    for s in rows:
        out.append(
            [
                s.detector,
                f"{s.f1:.3f}",
                f"{s.precision:.3f}",
                f"{s.recall:.3f}",
                f"{s.delay_median_ms:.0f}",
                f"{s.delay_p90_ms:.0f}",
                f"{s.fa_per_hour_clean:.1f}",
                f"{s.fa_per_hour_drift:.1f}",
            ]
        )
    return out


def per_type(results: Sequence[Result], stage: str) -> list[list[str]]:
    """Recall, label accuracy and median delay of one stage configuration per anomaly type."""
    out = [["anomaly", "clips", "recall", "label correct", "median delay ms"]]
    for kind in (*ANOMALY_TYPES, *MACHINE_TYPES):
        rs = [r for r in results if r.kind == kind]
        if not rs:
            continue
        found = labelled = 0
        delays = []
        for r in rs:
            assert r.truth is not None
            a, b = r.truth
            hits = [(t, lab) for t, lab in r.labels[stage] if a - TOL_BEFORE_S <= t <= b]
            if hits:
                found += 1
                delays.append((hits[0][0] - a) * 1000)
                labelled += any(lab in EXPECTED[kind] for _, lab in hits)
        med = f"{np.median(delays):.0f}" if delays else "-"
        out.append(
            [kind, str(len(rs)), f"{found / len(rs):.3f}", f"{labelled / max(found, 1):.3f}", med]
        )
    return out


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=10, help="clips per anomaly type")
    parser.add_argument("--clip-s", type=float, default=16.0, help="anomaly clip length, s")
    parser.add_argument(
        "--background-s", type=float, default=120.0, help="length of each clean/drift clip, s"
    )
    parser.add_argument(
        "--backgrounds", type=int, default=8, help="clean and drift clips each (one per rate)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-hst", action="store_true", help="skip the river baseline")
    parser.add_argument("--out", type=Path, default=Path("build/eval_anomaly"))
    parser.add_argument(
        "--demo",
        metavar="MODEL",
        help="the demo pump instead (16 kHz, its own anomalies too): the stage without and "
        "with this learned model (e.g. demo-pump), and the model alone",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an AnomalyConfig field for the stage (JSON value), repeatable",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    stages: dict[str, dict[str, object]] = {"anomaly-stage": overrides}
    kinds: tuple[str, ...] = ANOMALY_TYPES
    if args.demo:
        stages = {
            "classical": overrides,
            "classical+learned": {**overrides, "model": args.demo},
            "learned": {**overrides, "model": args.demo, "classical": False},
        }
        kinds = (*ANOMALY_TYPES, *MACHINE_TYPES)
    for fields in stages.values():
        AnomalyConfig.model_validate(fields)  # refuse a bad key before the run

    with_hst = not args.no_hst
    if with_hst:
        try:
            import river  # noqa: F401
        except ImportError:
            print("river is not installed: skipping the HalfSpaceTrees baseline", file=sys.stderr)
            with_hst = False

    def rate_of(seed: int) -> int:
        return DEMO_RATE if args.demo else RATES[seed % len(RATES)]

    jobs: list[Job] = []
    for kind in kinds:
        for seed in range(args.seeds):
            jobs.append((kind, seed, rate_of(seed), args.clip_s, with_hst, bool(args.demo), stages))
    for kind in ("clean", "drift"):
        for seed in range(100, 100 + args.backgrounds):
            jobs.append(
                (kind, seed, rate_of(seed), args.background_s, with_hst, bool(args.demo), stages)
            )
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_scenario, jobs))
    else:
        results = [run_scenario(j) for j in jobs]
    elapsed = time.perf_counter() - started

    rows = [score(results, name) for name in stages]
    for prefix in ("rms", "hst"):
        best = best_of(results, prefix)
        if best is not None:
            rows.append(best)
    main_table = table(rows)
    types = "\n".join(
        (f"{name}:\n\n" if len(stages) > 1 else "") + markdown(per_type(results, name))
        for name in stages
    )
    audio_s = sum(r.seconds for r in results)
    bg_min = sum(r.seconds for r in results if r.truth is None) / 60
    stage_rtf = sum(r.seconds_run for r in results) / audio_s
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows(main_table)
    (args.out / "results.md").write_text(markdown(main_table))
    (args.out / "per_type.md").write_text(types)
    widths = [max(len(r[i]) for r in main_table) for i in range(len(main_table[0]))]
    for r in main_table:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print()
    print(types)
    print(
        f"{len(results)} clips, {audio_s / 60:.1f} min of signal ({bg_min:.1f} min of "
        f"background), {elapsed:.0f} s wall; stage real-time factor {stage_rtf:.3f}; "
        f"tables in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
