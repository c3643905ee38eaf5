"""Tests of the learned denoiser: the network's streaming step equals its whole-sequence
forward, the stage is exact under any block split at every rate (resampled below 16 kHz),
the shipped model takes noise out of speech it never heard, and bad models and devices fail
clearly."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal as sp_signal
import soundfile as sf
import torch

from streamer.block import StreamLayout
from streamer.config import DenoiseConfig, parse_config
from streamer.errors import BackendUnavailableError, ConfigError
from streamer.stages import DenoiseStage
from streamer.stages.denoise_model import BandLayout, DenoiserNet, load_denoiser, save_denoiser

from ..helpers.offline import replay_wav
from ..helpers.signals import feed, noise, random_splits

ROOT = Path(__file__).resolve().parents[2]
F64 = npt.NDArray[np.float64]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained network: exactness does not depend on what the weights learned."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random.npz"
    save_denoiser(path, DenoiserNet(bands=24, hidden=32, layers=2), {"name": "random"})
    return str(path)


def si_sdr(ref: F64, est: F64) -> float:
    alpha = float(np.dot(est, ref) / np.dot(ref, ref))
    target = alpha * ref
    return float(10 * np.log10(np.sum(target**2) / np.sum((est - target) ** 2)))


def test_step_by_step_equals_the_whole_sequence() -> None:
    torch.manual_seed(1)
    net = DenoiserNet(bands=32, hidden=64, layers=2).eval()
    feats = torch.randn(3, 50, 32)
    with torch.inference_mode():
        whole, last = net(feats)
        state = net.initial_state(3)
        steps = []
        for t in range(50):
            g, state = net.step(feats[:, t], state)
            steps.append(g)
    torch.testing.assert_close(torch.stack(steps, dim=1), whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(state, last, rtol=0, atol=1e-6)


def test_bands_interpolate_to_unity_and_see_the_same_energy_at_any_rate() -> None:
    layout = BandLayout(32)
    a16, s16 = layout.weights(16_000, 320)
    a48, s48 = layout.weights(48_000, 960)
    np.testing.assert_allclose(s16.sum(axis=0), 1.0)
    np.testing.assert_allclose(s48.sum(axis=0), 1.0)  # bins above 8 kHz: the top band's gain
    np.testing.assert_allclose(a48[:161], a16, atol=1e-15)  # the same 50 Hz bins, per hertz
    assert not a48[161:].any()


RATES = [(16_000, 1), (48_000, 2), (8_000, 2), (44_100, 1), (22_050, 1), (11_025, 1)]


@pytest.mark.parametrize(("rate", "channels"), RATES)
def test_block_split_invariance(random_model: str, rate: int, channels: int) -> None:
    cfg = DenoiseConfig(method="learned", model=random_model)
    x = noise(channels, 2 * rate, rate, level=0.1)
    reference = feed(DenoiseStage(cfg, StreamLayout(channels, rate)), x, [x.shape[1]], rate)
    stage = DenoiseStage(cfg, StreamLayout(channels, rate))
    sizes = random_splits(x.shape[1], np.random.default_rng(rate), 3 * stage.n_fft)
    out = feed(stage, x, sizes, rate)
    assert out.shape == x.shape
    # The GRU over several frames at once rounds differently from one frame at a time.
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)
    stage.reset()
    np.testing.assert_allclose(feed(stage, x, [x.shape[1]], rate), reference, rtol=0, atol=1e-6)


def test_latency_is_one_frame_and_at_most_20_ms(random_model: str) -> None:
    for rate in (16_000, 48_000, 44_100):
        stage = DenoiseStage(DenoiseConfig(method="learned", model=random_model),
                             StreamLayout(1, rate))
        assert stage.n_fft == 2 * round(rate / 100) and stage.latency == stage.n_fft - 1
        assert stage.latency / rate <= 0.020


def test_channels_are_batched_but_independent(random_model: str) -> None:
    cfg = DenoiseConfig(method="learned", model=random_model)
    x = noise(2, 16_000, 9, level=0.1)
    x[1] *= 0.1
    both = feed(DenoiseStage(cfg, StreamLayout(2, 16_000)), x, [x.shape[1]], 16_000)
    for c in range(2):
        alone = feed(DenoiseStage(cfg, StreamLayout(1, 16_000)), x[c : c + 1], [16_000], 16_000)
        np.testing.assert_allclose(both[c], alone[0], rtol=0, atol=1e-6)


def _speech(text: str, voice: str) -> F64:
    """An utterance by espeak-ng at 16 kHz."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True,
                         capture_output=True).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float64")
    return np.asarray(sp_signal.resample_poly(x, 16_000 // 50, rate // 50), dtype=np.float64)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_the_shipped_model_takes_noise_out_of_unheard_speech() -> None:
    """A voice and a sentence the training never had, in pink noise at 0 dB."""
    clean = _speech("Every test of a filter should start from a signal it has not seen.",
                    "en-us-nyc+Annie")
    clean = np.concatenate([np.zeros(8000), clean, np.zeros(8000)]) * 0.1 / np.std(clean)
    spec = np.fft.rfft(np.random.default_rng(2).standard_normal(clean.size))
    spec /= np.sqrt(np.maximum(np.fft.rfftfreq(clean.size, 1 / 16_000), 20.0))
    pink = np.fft.irfft(spec, clean.size)
    noisy = clean + pink * np.std(clean) / np.std(pink)
    stage = DenoiseStage(DenoiseConfig(method="learned"), StreamLayout(1, 16_000))
    sizes = [256] * (noisy.size // 256) + [noisy.size % 256]
    y = feed(stage, noisy[None, :].astype(np.float32), sizes, 16_000)[0].astype(np.float64)
    d = stage.latency
    before, after = si_sdr(clean, noisy), si_sdr(clean[: y.size - d], y[d:])
    assert before == pytest.approx(0.0, abs=1.0)
    assert after > before + 6.0


def test_cuda_without_a_gpu_is_a_clear_start_up_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = DenoiseConfig(method="learned", device="cuda")
    with pytest.raises(BackendUnavailableError, match=r"stages\[0\]\.device = 'cuda'"):
        DenoiseStage(cfg, StreamLayout(1, 16_000))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_output() -> None:
    x = noise(2, 32_000, 11, level=0.1)
    out = {dev: feed(DenoiseStage(DenoiseConfig(method="learned", device=dev),
                                  StreamLayout(2, 16_000)), x, [4000] * 8, 16_000)
           for dev in ("cpu", "cuda")}
    np.testing.assert_allclose(out["cuda"], out["cpu"], rtol=0, atol=1e-4)


def test_a_bad_model_file_names_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"stages\[0\]\.model.*cannot read denoiser model"):
        DenoiseStage(DenoiseConfig(method="learned", model=str(bad)), StreamLayout(1, 16_000))
    with pytest.raises(ValueError, match="cannot read"):
        load_denoiser(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize(
    ("stage", "match"),
    [
        ({"method": "learned", "frame_ms": 10.0}, r"frame_ms do\(es\) not apply to method"),
        ({"model": "x.npz"}, r"model do\(es\) not apply to method = 'classical'"),
        ({"method": "learned", "device": "tpu"}, r"device: Input should be 'cpu' or 'cuda'"),
    ],
)
def test_config_errors(stage: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({"stages": [{"kind": "denoise", **stage}]}, environ={})


@pytest.mark.parametrize("rate", [8_000, 48_000])
def test_replay_with_the_example_config_at_any_rate(tmp_path: Path, rate: int) -> None:
    x = noise(1, rate, 12, level=0.05)[0]
    y, got_rate = replay_wav(tmp_path, x, rate, ROOT / "config" / "denoise.toml")
    assert got_rate == rate and y.size == x.size
    assert np.std(y[rate // 2 :]) < 0.5 * np.std(x)  # white noise alone: mostly removed
