"""Tests of the learned anomaly detector: mel features, model files, streaming against offline,
block-split invariance in the stage, what it finds on the demo pump, and its config errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from streamer.block import Block, StreamLayout
from streamer.cli import main
from streamer.config import AnomalyConfig, parse_config
from streamer.dsp.mel import mel_edges, mel_filterbank
from streamer.dsp.stft import frames
from streamer.errors import ConfigError
from streamer.stages.anomaly import AnomalyStage
from streamer.stages.anomaly_model import AnomalyModel, LearnedScorer, model_path
from tests.helpers.signals import random_splits

ROOT = Path(__file__).resolve().parents[2]
RATE = 16_000


def _scenarios() -> ModuleType:
    """tools/anomaly_scenarios.py, the generator the demo model was trained on."""
    spec = importlib.util.spec_from_file_location(
        "anomaly_scenarios", ROOT / "tools" / "anomaly_scenarios.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("anomaly_scenarios", module)
    spec.loader.exec_module(module)
    return module


SCENARIOS = _scenarios()


def pump(kind: str, seed: int, seconds: float) -> tuple[npt.NDArray[np.float32], Any]:
    sc = SCENARIOS.make_scenario(kind, seed, RATE, seconds, SCENARIOS.DEMO_PUMP)
    return sc.x, sc.truth


def learned_onsets(cfg: AnomalyConfig, x: npt.NDArray[np.float32], sizes: list[int]) -> list[Any]:
    stage = AnomalyStage(cfg, StreamLayout(x.shape[0], RATE))
    found: list[dict[str, Any]] = []
    start = 0
    for seq, n in enumerate(sizes):
        block = Block(np.ascontiguousarray(x[:, start : start + n]), "t", seq, start, RATE, seq)
        found += [a.fields for a in stage.process(block).annotations if a.kind == "anomaly"]
        start += n
    return found


@pytest.fixture(scope="module")
def demo() -> AnomalyModel:
    return AnomalyModel.load(model_path("demo-pump"))


def test_mel_filterbank_covers_every_band() -> None:
    fb = mel_filterbank(16_000, 342, 32, 50.0, 7200.0)
    assert fb.shape == (172, 32)
    assert np.all(fb.max(axis=0) > 0.5)  # no empty filter, each near its peak somewhere
    assert fb.min() >= 0.0
    edges = mel_edges(32, 50.0, 7200.0)
    assert edges[0] == pytest.approx(50.0) and edges[-1] == pytest.approx(7200.0)
    assert np.all(np.diff(edges) > 0)
    with pytest.raises(ValueError, match=r"need 0 <= fmin \(100\) < fmax \(9000\)"):
        mel_filterbank(16_000, 342, 32, 100, 9000)


def test_shipped_model_is_found_in_the_package(demo: AnomalyModel) -> None:
    assert model_path("demo-pump").is_file()
    assert (demo.rate, demo.n_fft, demo.hop, demo.window) == (16_000, 2048, 512, "hann")
    assert demo.card["threshold_z"] >= 4.0
    assert (model_path("demo-pump").with_suffix(".md")).is_file()  # its model card


def test_model_round_trips_through_its_file(demo: AnomalyModel, tmp_path: Path) -> None:
    demo.save(tmp_path / "copy.npz")
    again = AnomalyModel.load(tmp_path / "copy.npz")
    assert again.card == demo.card
    for a, b in zip(again.weights + again.biases, demo.weights + demo.biases, strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", card=np.array('{"format": "something"}'))
    with pytest.raises(ValueError, match=r"not a streamer-anomaly-autoencoder/2 model"):
        AnomalyModel.load(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"cannot read the model"):
        AnomalyModel.load(tmp_path / "broken.npz")


def test_streaming_scores_equal_the_whole_signal_scores(demo: AnomalyModel) -> None:
    x, _ = pump("speed", 3, 9.0)
    power = np.abs(frames(x[0].astype(np.float64), demo.n_fft, demo.hop)) ** 2
    whole = demo.scores(power, 4.0)
    scorer = LearnedScorer(demo, 1, 4.0)
    streamed = np.array([scorer.step(p[None, :])[0] for p in power])
    assert np.all(streamed[: demo.context - 1] == 0.0)
    np.testing.assert_allclose(streamed, whole, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("seed", "frame_ms"), [(0, 21.33), (1, 40.0)])
def test_learned_stage_block_split_invariance(seed: int, frame_ms: float) -> None:
    """The model's frames are its own: the stage's framing may be anything."""
    x, _ = pump("harmonic", seed, 10.0)
    cfg = AnomalyConfig(model="demo-pump", frame_ms=frame_ms)
    reference = learned_onsets(cfg, x, [256] * (x.shape[1] // 256) + [x.shape[1] % 256])
    assert any(f["state"] == "onset" for f in reference)
    sizes = random_splits(x.shape[1], np.random.default_rng(seed), 2000)
    assert learned_onsets(cfg, x, sizes) == reference


def test_learned_detector_names_the_band_it_cannot_reconstruct() -> None:
    x, (start, end) = pump("speed", 2, 12.0)
    cfg = AnomalyConfig(model="demo-pump", classical=False)
    hits = [f for f in learned_onsets(cfg, x, [512] * (x.shape[1] // 512)) if f["state"] == "onset"]
    assert [f["detector"] for f in hits] == ["learned"]
    (hit,) = hits
    assert start - 0.05 <= hit["detected_s"] <= end
    low, high = hit["band_hz"]
    assert 50.0 <= low < hit["peak_hz"] < high <= 7200.0


def test_learned_detector_stays_quiet_on_normal_operation() -> None:
    for kind, seed in (("clean", 100), ("drift", 101)):
        x, _ = pump(kind, seed, 60.0)
        cfg = AnomalyConfig(model="demo-pump", classical=False)
        assert learned_onsets(cfg, x, [1024] * (x.shape[1] // 1024)) == [], kind


@pytest.mark.parametrize(
    ("stage", "layout", "match"),
    [
        ({"model": "demo-pump"}, StreamLayout(1, 48_000), r"trained at 16000 Hz but the stream"),
        ({"model": "no-such-model"}, StreamLayout(1, RATE), r"cannot read the model"),
    ],
)
def test_model_mismatch_is_a_config_error(
    stage: dict[str, Any], layout: StreamLayout, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        AnomalyStage(AnomalyConfig(**stage), layout, index=1)
    assert info.value.key == "stages[1].model"


def test_config_resolves_model_files_and_needs_one_without_the_classical_detectors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.toml"
    cfg = parse_config({"stages": [{"kind": "anomaly", "model": "mine.npz"}]}, path=path)
    assert cfg.stages[0].model == str(tmp_path / "mine.npz")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"classical = false needs a learned model"):
        parse_config({"stages": [{"kind": "anomaly", "classical": False}]}, path=path)


def test_replay_with_the_example_config_writes_learned_events(tmp_path: Path) -> None:
    """config/anomaly-pump.toml on a recording of the pump running 5 % fast for a while."""
    x, (start, end) = pump("speed", 4, 12.0)
    soundfile.write(tmp_path / "pump.wav", x[0], RATE, subtype="FLOAT")
    events = tmp_path / "events.jsonl"
    cfg = ROOT / "config" / "anomaly-pump.toml"
    argv = ["replay", str(tmp_path / "pump.wav"), "--config", str(cfg), "--events", str(events)]
    assert main(argv) == 0
    found = [json.loads(line) for line in events.read_text().splitlines()]
    onsets = [f for f in found if f["state"] == "onset"]
    assert [f["detector"] for f in onsets] == ["learned"]
    assert start <= onsets[0]["detected_s"] <= end
