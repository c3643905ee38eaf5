"""Train the learned denoiser: a band-gain GRU (`streamer.stages.denoise_model`) on made mixtures.

Data (`tools/denoise_data.py`): the training split of the espeak-ng and asterisk
speech corpus, mixed on the fly with the nine generated noise families at -5..20 dB
SNR, random level and colouring; every step sees new mixtures. A user's own model:
``--clean DIR`` (speech or whatever signal is to be kept) and ``--noise DIR``
(recordings of their noise, mixed in half of the time beside the generated
families), any rate (resampled to 16 kHz).

Loss, on the STFT the stage uses (20 ms sqrt-Hann frames, 10 ms hop, 16 kHz): the
compressed magnitude error ``| |Y|^0.3 - |S|^0.3 |^2`` plus 0.3 times the compressed
complex error (which also punishes keeping bins whose phase is the noise's), with Y
the noisy spectrum times the interpolated band gains and S the clean one. Adam,
cosine-decayed learning rate, gradient clipping. Seeded; the default run takes about
half an hour on this 2-core machine (``--steps``).

    .venv/bin/python tools/train_denoiser.py                      # models/denoise-speech.npz
    .venv/bin/python tools/train_denoiser.py --clean my/speech --noise my/noise --out my.npz
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import denoise_data as data
import numpy as np
import torch

from streamer.dsp.stft import wola_window
from streamer.stages.denoise_model import (
    BandLayout,
    DenoiserNet,
    log_band_energy,
    save_denoiser,
)

ROOT = Path(__file__).resolve().parents[1]
FRAME, HOP = 320, 160  # 20 ms, 10 ms at 16 kHz
COMPRESS = 0.3


class Mixtures(torch.utils.data.IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Batches of (noisy, clean) float32 tensors (batch, samples), made in a worker process."""

    def __init__(self, corpus: data.Corpus, noises: list[np.ndarray], batch: int,
                 seconds: float, seed: int) -> None:
        self.corpus, self.noises, self.batch = corpus, noises, batch
        self.seconds, self.seed = seconds, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mixes = data.training_mixtures(self.corpus, self.seconds, self.seed, self.noises)
        while True:
            got = [next(mixes) for _ in range(self.batch)]
            yield (torch.from_numpy(np.stack([m.noisy for m in got])),
                   torch.from_numpy(np.stack([m.clean for m in got])))


class Frontend(torch.nn.Module):
    """The stage's analysis in torch: frames, spectra, band features, gains to bins."""

    window: torch.Tensor
    analysis: torch.Tensor
    synthesis: torch.Tensor

    def __init__(self, bands: int) -> None:
        super().__init__()
        window = wola_window(FRAME, HOP)
        analysis, synthesis = BandLayout(bands).weights(data.RATE, FRAME)
        self.window_energy = float(np.sum(window**2))
        self.register_buffer("window", torch.from_numpy(window.astype(np.float32)))
        self.register_buffer("analysis", torch.from_numpy(analysis.astype(np.float32)))
        self.register_buffer("synthesis", torch.from_numpy(synthesis.astype(np.float32)))

    def spectra(self, x: torch.Tensor) -> torch.Tensor:
        spec: torch.Tensor = torch.fft.rfft(x.unfold(-1, FRAME, HOP) * self.window, dim=-1)
        return spec

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        power = spec.real**2 + spec.imag**2
        return log_band_energy(power, self.analysis, self.window_energy, data.RATE)


def compressed(z: torch.Tensor) -> torch.Tensor:
    mag = z.abs().clamp_min(1e-8)
    return z * mag ** (COMPRESS - 1.0)


def spectral_loss(est: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    e, r = compressed(est / scale), compressed(ref / scale)
    return (e.abs() - r.abs()).pow(2).mean() + 0.3 * (e - r).abs().pow(2).mean()


def train(args: argparse.Namespace) -> tuple[DenoiserNet, dict[str, object]]:
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    if args.clean:
        corpus = data.corpus_from_dir(args.clean)
    else:
        corpus = data.load_corpus("train", args.data)
    noises = data.noises_from_dir(args.noise) if args.noise else []
    net = DenoiserNet(args.bands, args.hidden, args.layers)
    front = Frontend(args.bands)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    loader = torch.utils.data.DataLoader(
        Mixtures(corpus, noises, args.batch, args.seconds, args.seed), batch_size=None,
        num_workers=1, prefetch_factor=4)
    started = time.perf_counter()
    running = 0.0
    for step, (noisy, clean) in enumerate(loader, start=1):
        x, s = front.spectra(noisy), front.spectra(clean)
        gains, _ = net(front.features(x))
        y = x * (gains @ front.synthesis)
        scale = noisy.pow(2).mean(dim=1).sqrt().clamp_min(1e-6)[:, None, None]
        loss = spectral_loss(y, s, scale)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0 or step == args.steps:
            elapsed = time.perf_counter() - started
            print(f"step {step}/{args.steps}  loss {running:.4f}  {elapsed:.0f} s",
                  file=sys.stderr, flush=True)
        if step == args.steps:
            break
    card: dict[str, object] = {
        "name": args.out.stem,
        "trained_rate": data.RATE,
        "frame_s": FRAME / data.RATE,
        "hop_s": HOP / data.RATE,
        "training": {
            "data": (f"clean: {args.clean}, noise: {args.noise or 'generated families'}"
                     if args.clean else
                     f"{corpus.seconds / 60:.0f} min of held-in speech ({len(corpus.utterances)} "
                     f"utterances: espeak-ng and asterisk prompts), noise families "
                     f"{', '.join(data.NOISE_FAMILIES)}, SNR -5..20 dB"),
            "steps": args.steps, "batch": args.batch, "clip_s": args.seconds,
            "seed": args.seed, "loss": round(running, 5),
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "command": "tools/train_denoiser.py " + " ".join(sys.argv[1:]),
        },
    }
    return net, card


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "denoise-speech.npz")
    parser.add_argument("--clean", type=Path, help="folder of clean recordings (a user's model)")
    parser.add_argument("--noise", type=Path, help="folder of noise recordings")
    parser.add_argument("--data", type=Path, default=data.DEFAULT_DATA, help="corpus cache")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="mixture length")
    parser.add_argument("--bands", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (data: 1 more)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    net, card = train(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_denoiser(args.out, net, card)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
