"""The denoiser's data and training tools: splits that never share material, every noise
family, and a user's own model trained from folders of WAV files, reproducibly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.block import StreamLayout
from streamer.config import DenoiseConfig
from streamer.stages import DenoiseStage

from .conftest import REPO
from .helpers.signals import feed

sys.path.insert(0, str(REPO / "tools"))
import denoise_data as data


def test_evaluation_never_shares_speakers_texts_or_prompts_with_training() -> None:
    assert set(data.speakers("train")).isdisjoint(data.speakers("eval"))
    assert not {v for v, _ in data.speakers("train")} & data.EVAL_VOICES
    assert not {var for _, var in data.speakers("train")} & data.EVAL_VARIANTS
    train_texts, eval_texts = data.sentences("train"), data.sentences("eval")
    if not train_texts:
        pytest.skip("no licence texts on this system")
    assert eval_texts and set(train_texts).isdisjoint(eval_texts)
    assert set(data.asterisk_prompts("train")).isdisjoint(data.asterisk_prompts("eval"))


@pytest.mark.parametrize("family", data.NOISE_FAMILIES)
def test_every_noise_family_is_finite_and_unit_rms(family: str) -> None:
    talkers = data.Corpus("train", [np.sin(np.arange(8000) / 5).astype(np.float32)], ["t"])
    x = data.make_noise(family, 16_000, np.random.default_rng(0), talkers=talkers)
    assert x.shape == (16_000,) and np.isfinite(x).all()
    assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0, rel=1e-6)


def test_mixtures_are_clean_plus_noise_at_their_snr() -> None:
    corpus = data.Corpus("eval", [np.sin(np.arange(16_000) / 3).astype(np.float32)], ["t"])
    clips = data.evaluation_set(corpus, count=18, seconds=1.0)
    assert [m.family for m in clips[:9]] == list(data.NOISE_FAMILIES)
    assert all(-5.0 <= m.snr_db <= 20.0 for m in clips)
    assert all(np.abs(m.noisy).max() <= 0.95 for m in clips)
    with pytest.raises(ValueError, match="held-out"):
        data.evaluation_set(data.Corpus("train", corpus.utterances, corpus.sources))
    with pytest.raises(ValueError, match="evaluation seed space"):
        next(data.training_mixtures(corpus, 1.0, data.EVAL_SEED_BASE))


def _train(tmp_path: Path, clean: Path, noise: Path, name: str) -> Path:
    out = tmp_path / f"{name}.npz"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_denoiser.py"), "--clean", str(clean),
         "--noise", str(noise), "--out", str(out), "--steps", "3", "--batch", "2",
         "--seconds", "1", "--hidden", "16", "--bands", "16"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def test_a_users_model_trains_from_folders_reproducibly_and_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clean, noise = tmp_path / "clean", tmp_path / "noise"
    clean.mkdir()
    noise.mkdir()
    t = np.arange(22_050) / 22_050
    for i in range(3):  # another rate than the model's: resampled on reading
        sf.write(clean / f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), 22_050)
    sf.write(noise / "hiss.flac", 0.1 * rng.standard_normal(16_000), 16_000)
    first, second = _train(tmp_path, clean, noise, "a"), _train(tmp_path, clean, noise, "b")
    with np.load(first) as a, np.load(second) as b:
        assert a.files == b.files
        for key in a.files:
            if key != "card":
                np.testing.assert_array_equal(a[key], b[key])
    stage = DenoiseStage(DenoiseConfig(method="learned", model=str(first)), StreamLayout(1, 16_000))
    x = (0.1 * rng.standard_normal((1, 8000))).astype(np.float32)
    assert np.isfinite(feed(stage, x, [8000], 16_000)).all()
