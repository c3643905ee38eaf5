"""Tests of the anomaly stage: block-split invariance, detections, event logic, errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from streamer.block import Annotation, Block, StreamLayout
from streamer.cli import main
from streamer.config import AnomalyConfig, SynthSourceConfig, parse_config
from streamer.errors import BlockLayoutError, ConfigError
from streamer.sources.synth import SynthSource, anomaly_schedule
from streamer.stages import STAGE_KINDS, build_stages
from streamer.stages.anomaly import AnomalyStage, EventTracker
from tests.helpers.signals import random_splits

ROOT = Path(__file__).resolve().parents[2]
Found = list[tuple[int, Annotation]]  # (index of the last sample of the carrying block + 1, ann)


def synth(seconds: float, **kw: Any) -> tuple[npt.NDArray[np.float32], SynthSourceConfig]:
    cfg = SynthSourceConfig(realtime=False, duration_s=seconds, **kw)
    src = SynthSource(cfg, "s")
    x = np.concatenate([b.samples for b in src.blocks(1 << 16, threading.Event())], axis=1)
    return x, cfg


def run(stage: AnomalyStage, x: npt.NDArray[np.float32], sizes: Sequence[int], rate: int) -> Found:
    """Stream ``x`` through ``stage``; check pass-through; return the annotations found."""
    found: Found = []
    start = 0
    for seq, n in enumerate(sizes):
        block = Block(np.ascontiguousarray(x[:, start : start + n]), "t", seq, start, rate, seq)
        out = stage.process(block)
        assert out.samples is block.samples  # untouched, not copied
        assert (out.seq, out.t0, out.rate) == (seq, start, rate)
        start += n
        found.extend((start, a) for a in out.annotations)
    return found


def onsets(found: Found) -> list[dict[str, Any]]:
    return [a.fields for _, a in found if a.kind == "anomaly" and a.fields["state"] == "onset"]


def offsets(found: Found) -> list[dict[str, Any]]:
    return [a.fields for _, a in found if a.kind == "anomaly" and a.fields["state"] == "offset"]


@pytest.fixture(scope="module")
def synth_scene() -> tuple[Found, SynthSourceConfig]:
    """The default 48 kHz synth scene, 24 s: one whistle, one click train, one dropout."""
    x, cfg = synth(24.0)
    stage = AnomalyStage(AnomalyConfig(), StreamLayout(1, cfg.rate))
    sizes = [256] * (x.shape[1] // 256) + [x.shape[1] % 256]
    return run(stage, x, sizes, cfg.rate), cfg


def test_registered() -> None:
    assert STAGE_KINDS["anomaly"] is AnomalyStage
    cfg = parse_config({"stages": [{"kind": "fir"}, {"kind": "anomaly", "name": "det"}]})
    stages = build_stages(cfg.stages, StreamLayout(2, 48_000), block=256)
    assert [s.name for s in stages] == ["fir", "det"]
    assert stages[1].latency == 0


def test_frame_and_hop_at_common_rates() -> None:
    for rate, n in ((48_000, 1024), (44_100, 940), (16_000, 342), (10_000, 214)):
        stage = AnomalyStage(AnomalyConfig(), StreamLayout(1, rate))
        assert (stage.n_fft, stage.hop) == (n, n // 4)


@pytest.mark.parametrize("seed", range(3))
def test_anomaly_block_split_invariance(seed: int) -> None:
    x, cfg = synth(9.0, rate=16_000, channels=2, anomaly_period_s=4.0, seed=seed)
    acfg = AnomalyConfig(warmup_s=0.4, spectrum_rate_hz=20.0)
    layout = StreamLayout(2, cfg.rate)
    whole = run(AnomalyStage(acfg, layout), x, [x.shape[1]], cfg.rate)
    assert len(onsets(whole)) >= 4
    assert sum(a.kind == "spectrum" for _, a in whole) == pytest.approx(9 * 20, rel=0.1)
    rng = np.random.default_rng(seed)
    split = run(AnomalyStage(acfg, layout), x, random_splits(x.shape[1], rng, 2000), cfg.rate)
    assert [(a.kind, a.fields) for _, a in split] == [(a.kind, a.fields) for _, a in whole]
    for (_, a), (_, b) in zip(split, whole, strict=True):
        if a.array is not None:
            assert b.array is not None
            np.testing.assert_array_equal(a.array, b.array)
    # Each annotation rides on the block that completes its deciding frame.
    for end, ann in split:
        key = "detected_s" if ann.kind == "anomaly" else "t_s"
        sample = round(ann.fields[key] * cfg.rate)
        assert sample <= end
        assert sample > end - max(1, 2000)


def test_spectrum_annotations() -> None:
    x, _ = synth(2.0, rate=16_000, channels=2)
    stage = AnomalyStage(AnomalyConfig(spectrum_rate_hz=10.0, n_bands=12), StreamLayout(2, 16_000))
    spectra = [
        a for _, a in run(stage, x, [512] * (x.shape[1] // 512), 16_000) if a.kind == "spectrum"
    ]
    assert 19 <= len(spectra) <= 21  # 10 Hz to the nearest whole number of hops
    first = spectra[0]
    assert first.array is not None and first.array.shape == (2, 12)
    assert first.array.dtype == np.float32
    assert len(first.fields["bands_hz"]) == 12 and first.fields["bands_hz"][0][0] == 50.0
    assert len(first.fields["flux_db"]) == 2
    json.dumps(first.fields)


def test_spectral_flux_marks_an_onset() -> None:
    """Flux (largest mean band rise since the last message) jumps where a burst begins."""
    rate = 16_000
    x = 0.01 * np.random.default_rng(3).standard_normal((1, 2 * rate)).astype(np.float32)
    x[:, rate:] *= 30  # a broadband step at 1 s
    stage = AnomalyStage(AnomalyConfig(spectrum_rate_hz=20.0), StreamLayout(1, rate))
    spectra = [a.fields for _, a in run(stage, x, [256] * (x.shape[1] // 256), rate)
               if a.kind == "spectrum"]  # fmt: skip
    flux = {round(f["t_s"], 2): f["flux_db"][0] for f in spectra}
    at_step = max(v for t, v in flux.items() if 1.0 <= t <= 1.1)
    steady = max(v for t, v in flux.items() if 0.3 <= t <= 0.9)
    assert at_step > 10 > 3 > steady  # a 30 dB step, spread over a few (smoothed) frames


def test_empty_blocks_change_nothing() -> None:
    x, _ = synth(3.0, rate=16_000, anomaly_period_s=4.0)
    acfg = AnomalyConfig(warmup_s=0.4)
    a = run(AnomalyStage(acfg, StreamLayout(1, 16_000)), x, [1000] * 48, 16_000)
    sizes = [s for n in [1000] * 48 for s in (0, n, 0)]
    b = run(AnomalyStage(acfg, StreamLayout(1, 16_000)), x, sizes, 16_000)
    assert [f.fields for _, f in a] == [f.fields for _, f in b]


def test_no_events_during_warmup() -> None:
    rate = 16_000
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((1, 3 * rate))).astype(np.float32)
    x[:, rate // 2 : rate] *= 100  # a 40 dB burst inside the warm-up
    sizes = [256] * (x.shape[1] // 256)
    early = AnomalyStage(AnomalyConfig(warmup_s=0.3), StreamLayout(1, rate))
    (hit,) = onsets(run(early, x, sizes, rate))
    assert hit["detector"] == "broadband"
    assert hit["start_s"] == pytest.approx(0.5, abs=0.03)
    late = AnomalyStage(AnomalyConfig(warmup_s=1.2), StreamLayout(1, rate))
    assert all(f["detected_s"] >= 1.2 for f in onsets(run(late, x, sizes, rate)))


def test_synth_whistle_is_tonal(synth_scene: tuple[Found, SynthSourceConfig]) -> None:
    found, cfg = synth_scene
    _, start, end = next(s for s in anomaly_schedule(cfg) if s[0] == "whistle")
    hits = [f for f in onsets(found) if start - 0.05 <= f["detected_s"] <= end]
    assert len(hits) == 1
    hit = hits[0]
    assert hit["detector"] == "tonal"
    assert hit["peak_hz"] == pytest.approx(3100, abs=10)
    assert hit["band_hz"][0] <= 3100 <= hit["band_hz"][1]
    assert hit["detected_s"] - start < 0.1
    assert set(hit) == {
        "state",
        "event_id",
        "start_s",
        "detected_s",
        "score",
        "threshold",
        "band_hz",
        "peak_hz",
        "detector",
        "channel",
    }
    assert hit["score"] >= hit["threshold"] == 1.0
    off = next(f for f in offsets(found) if f["event_id"] == hit["event_id"])
    assert off["duration_s"] == pytest.approx(end - start, abs=0.1)


def test_synth_clicks_are_impulsive_at_12_hz(synth_scene: tuple[Found, SynthSourceConfig]) -> None:
    found, cfg = synth_scene
    _, start, end = next(s for s in anomaly_schedule(cfg) if s[0] == "clicks")
    hits = [f for f in onsets(found) if start - 0.05 <= f["detected_s"] <= end]
    assert [h["detector"] for h in hits] == ["impulsive"]
    assert hits[0]["peak_hz"] == pytest.approx(3600, abs=200)  # the knock's resonance
    off = next(f for f in offsets(found) if f["event_id"] == hits[0]["event_id"])
    assert off["repetition_hz"] == pytest.approx(12.0, abs=0.5)
    assert off["duration_s"] == pytest.approx(end - start, abs=0.15)


def test_synth_dropout(synth_scene: tuple[Found, SynthSourceConfig]) -> None:
    found, cfg = synth_scene
    _, start, end = next(s for s in anomaly_schedule(cfg) if s[0] == "dropout")
    hits = [f for f in onsets(found) if start - 0.05 <= f["detected_s"] <= end]
    assert [h["detector"] for h in hits] == ["dropout"]
    assert hits[0]["peak_hz"] is None
    assert hits[0]["detected_s"] - start < 0.1


def test_synth_scene_has_no_other_events(synth_scene: tuple[Found, SynthSourceConfig]) -> None:
    found, cfg = synth_scene
    period = round(cfg.anomaly_period_s * cfg.rate) / cfg.rate
    windows = [
        (n, a + r * period, b + r * period) for n, a, b in anomaly_schedule(cfg) for r in (0, 1)
    ]
    stray = [
        f
        for f in onsets(found)
        if not any(a - 0.05 <= f["detected_s"] <= b + 0.1 for _, a, b in windows)
    ]
    assert stray == []


def machine(seconds: float, rate: int, seed: int) -> npt.NDArray[np.float32]:
    """A steady machine: 50 Hz hum with harmonics, a 1 kHz whine and white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    x = 0.01 * rng.standard_normal(t.size)
    for h, amp in ((1, 0.1), (2, 0.05), (3, 0.03), (5, 0.01)):
        x += amp * np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 6.3))
    x += 0.02 * np.sin(2 * np.pi * 1000 * t)
    return x.astype(np.float32)[None, :]


def test_clean_background_minute_has_no_events() -> None:
    rate = 16_000
    x = machine(60.0, rate, seed=5)
    stage = AnomalyStage(AnomalyConfig(), StreamLayout(1, rate))
    assert onsets(run(stage, x, [4096] * (x.shape[1] // 4096) + [x.shape[1] % 4096], rate)) == []


def test_new_tone_on_machine_background() -> None:
    rate = 16_000
    x = machine(8.0, rate, seed=6)
    t = np.arange(rate * 2) / rate
    x[0, 4 * rate : 6 * rate] += 0.01 * np.sin(2 * np.pi * 2345.0 * t)
    stage = AnomalyStage(AnomalyConfig(), StreamLayout(1, rate))
    found = run(stage, x, [256] * (x.shape[1] // 256), rate)
    (hit,) = onsets(found)
    assert (hit["detector"], hit["channel"]) == ("tonal", 0)
    assert hit["peak_hz"] == pytest.approx(2345.0, abs=8)
    assert 4.0 <= hit["detected_s"] < 4.1
    (off,) = offsets(found)
    assert off["duration_s"] == pytest.approx(2.0, abs=0.1)


def test_channels_are_independent() -> None:
    rate = 16_000
    x = np.concatenate([machine(6.0, rate, seed=7), machine(6.0, rate, seed=8)])
    x[1, 4 * rate : 5 * rate] *= 1e-3
    stage = AnomalyStage(AnomalyConfig(), StreamLayout(2, rate))
    hits = onsets(run(stage, x, [1024] * (x.shape[1] // 1024), rate))
    assert [(h["channel"], h["detector"]) for h in hits] == [(1, "dropout")]


def test_reset_gives_fresh_output() -> None:
    x, _ = synth(5.0, rate=16_000, anomaly_period_s=4.0)
    stage = AnomalyStage(AnomalyConfig(warmup_s=0.4), StreamLayout(1, 16_000))
    first = run(stage, x, [700] * (x.shape[1] // 700), 16_000)
    assert onsets(first)
    stage.reset()
    again = run(stage, x, [700] * (x.shape[1] // 700), 16_000)

    def without_ids(found: Found) -> list[dict[str, Any]]:
        return [{k: v for k, v in a.fields.items() if k != "event_id"} for _, a in found]

    assert without_ids(again) == without_ids(first)
    # Event ids go on counting: a subscriber never sees two events with one id.
    first_ids = {f["event_id"] for f in onsets(first)}
    assert min(f["event_id"] for f in onsets(again)) > max(first_ids)


def test_event_times_are_stream_times_across_gaps() -> None:
    """A stage started mid-stream, and lost samples in between, still give stream times."""
    x, _ = synth(8.0, rate=16_000, anomaly_period_s=4.0)
    cfg = AnomalyConfig(warmup_s=0.4)
    ref = onsets(run(AnomalyStage(cfg, StreamLayout(1, 16_000)), x, [400] * 320, 16_000))
    stage = AnomalyStage(cfg, StreamLayout(1, 16_000))
    shifted: list[dict[str, Any]] = []
    for seq, start in enumerate(range(0, x.shape[1], 400)):
        # The stream began 1000 s earlier; 0.1 s is lost at 1.0 s (t0 jumps past it).
        t0 = 16_000_000 + start + (1600 if start >= 16_000 else 0)
        block = Block(np.ascontiguousarray(x[:, start : start + 400]), "t", seq, t0, 16_000, seq)
        shifted += [a.fields for a in stage.process(block).annotations if a.kind == "anomaly"]
    shifted = [f for f in shifted if f["state"] == "onset"]
    assert len(shifted) == len(ref) >= 2
    for got, want in zip(shifted, ref, strict=True):
        late = 1000.0 + (0.1 if want["start_s"] > 1.0 else 0.0)
        assert got["start_s"] == pytest.approx(want["start_s"] + late, abs=1e-6)


def test_layout_mismatch_raises() -> None:
    stage = AnomalyStage(AnomalyConfig(name="det"), StreamLayout(2, 16_000))
    with pytest.raises(BlockLayoutError, match=r"block has 1 channels, anomaly stage 'det' was"):
        stage.process(Block(np.zeros((1, 10), np.float32), "t", 0, 0, 16_000, 0))
    with pytest.raises(BlockLayoutError, match=r"block rate is 8000 Hz"):
        stage.process(Block(np.zeros((2, 10), np.float32), "t", 0, 0, 8000, 0))


# ------------------------------------------------------------------ event logic


def track(scores: Sequence[float], **kw: int) -> list[tuple[int, str]]:
    args = {"min_frames": 1, "gap_frames": 1, "refractory_frames": 0} | kw
    tracker = EventTracker(1.0, 0.5, **args)
    out = []
    for k, s in enumerate(scores):
        state = tracker.step(k, s)
        if state:
            out.append((k, state))
    return out


def test_tracker_hysteresis() -> None:
    # Onset at 1.0; the score may sag to 0.5 without ending the event.
    assert track([0, 1.2, 0.8, 0.6, 0.5, 0.4, 0.9, 0.4]) == [(1, "onset"), (5, "offset")]


def test_tracker_min_duration() -> None:
    scores = [0, 1.5, 0, 1.5, 1.5, 0, 1.5, 1.5, 1.5, 0, 0]
    assert track(scores, min_frames=3) == [(8, "onset"), (9, "offset")]


def test_tracker_merges_close_recurrences() -> None:
    clicks = [2.0, 0, 0, 0] * 4 + [0] * 5
    assert track(clicks, gap_frames=4) == [(0, "onset"), (16, "offset")]
    assert track(clicks, gap_frames=3) == [
        (0, "onset"),
        (3, "offset"),
        (4, "onset"),
        (7, "offset"),
        (8, "onset"),
        (11, "offset"),
        (12, "onset"),
        (15, "offset"),
    ]


def test_tracker_refractory() -> None:
    scores = [2.0, 0, 2.0, 2.0, 0, 0, 2.0, 0]
    assert track(scores, refractory_frames=3) == [
        (0, "onset"),
        (1, "offset"),
        (6, "onset"),
        (7, "offset"),
    ]
    assert track(scores) == [
        (0, "onset"),
        (1, "offset"),
        (2, "onset"),
        (4, "offset"),
        (6, "onset"),
        (7, "offset"),
    ]


def test_tracker_bad_thresholds() -> None:
    with pytest.raises(ValueError, match=r"thresholds must satisfy 0 < off=2.0 <= on=1.0"):
        EventTracker(1.0, 2.0, 1, 1, 0)


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("stage", "match"),
    [
        ({"off_threshold": 2.0}, r"stages\[0\]: off_threshold 2.0 must not exceed on_threshold"),
        ({"bands": "explicit"}, r"stages\[0\]: bands = 'explicit' needs bands_hz"),
        ({"bands_hz": [[10, 20]]}, r"bands_hz needs bands = 'explicit'"),
        ({"bands": "explicit", "bands_hz": [[300, 100]]}, r"band \[300.0, 100.0\] must satisfy"),
        ({"fmin_hz": 500.0, "fmax_hz": 400.0}, r"fmax_hz 400.0 must be above fmin_hz 500.0"),
        ({"hop_ratio": 3}, r"stages\[0\]\.hop_ratio: Input should be 2, 4 or 8"),
        ({"frame_ms": 0}, r"stages\[0\]\.frame_ms: Input should be greater than 0.5"),
        ({"tonal_db": -1}, r"stages\[0\]\.tonal_db: Input should be greater than 0"),
        ({"thresold": 1}, r"stages\[0\]\.thresold: unknown key"),
    ],
)
def test_config_errors(stage: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({"stages": [{"kind": "anomaly", **stage}]}, environ={})


def test_stage_config_errors() -> None:
    layout = StreamLayout(1, 8000)
    with pytest.raises(ConfigError, match=r"stages\[2\]\.fmax_hz: band range 50-6000 Hz must lie"):
        AnomalyStage(AnomalyConfig(fmax_hz=6000.0), layout, index=2)
    cfg = AnomalyConfig(bands="explicit", bands_hz=((100.0, 5000.0),))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.bands_hz: band edge 5000 Hz is above"):
        AnomalyStage(cfg, layout)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.window: window 'nope'"):
        AnomalyStage(AnomalyConfig(window="nope"), layout)


def test_explicit_bands() -> None:
    cfg = AnomalyConfig(bands="explicit", bands_hz=((100.0, 1000.0), (2000.0, 4000.0)))
    stage = AnomalyStage(cfg, StreamLayout(1, 16_000))
    np.testing.assert_array_equal(stage.bands_hz, [[100, 1000], [2000, 4000]])


def test_example_config_is_valid() -> None:
    from streamer.config import load_config

    cfg = load_config(ROOT / "config" / "anomaly.toml", environ={})
    assert [s.kind for s in cfg.stages][-1] == "anomaly"


# -------------------------------------------------------------------- end to end


def test_replay_finds_synth_anomalies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, cfg = synth(45.0)
    wav = tmp_path / "synth.wav"
    soundfile.write(wav, x.T, cfg.rate, subtype="FLOAT")
    events = tmp_path / "ev.jsonl"
    code = main(
        [
            "replay",
            str(wav),
            "--config",
            str(ROOT / "config" / "anomaly.toml"),
            "--events",
            str(events),
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    found = [e for e in lines if e["state"] == "onset"]
    period = round(cfg.anomaly_period_s * cfg.rate) / cfg.rate
    want = {"whistle": "tonal", "clicks": "impulsive", "dropout": "dropout"}
    for rep in range(2):
        for name, start, end in anomaly_schedule(cfg):
            a, b = start + rep * period, end + rep * period
            hits = [e for e in found if a - 0.05 <= e["detected_s"] <= b]
            assert [e["detector"] for e in hits] == [want[name]], (name, rep, hits)
    assert all(e["stream"] == "main" for e in lines)
