"""Train the learned anomaly detector: an autoencoder on log-spectral frames of normal operation.

DCASE-style: the model learns to reconstruct windows of ``--context`` feature
frames of a machine running normally; what it cannot reconstruct is new. The
anomaly stage (``model = ...``) turns its smoothed reconstruction error into
events with the same logic as its other detectors.

Data, one of:

- the demo pump of ``tools/anomaly_scenarios.py`` (default): ``--minutes`` of
  normal operation at 16 kHz, half stationary and half drifting in speed, level
  and noise colour, from seeds that the evaluation never uses;
- ``--normal DIR [DIR ...]``: a user's recordings of normal operation (WAV,
  FLAC, OGG; one sample rate; every channel is taken as a separate example).

Features: long frames (``--frame-ms``, 128 ms: 7.8 Hz bins at 16 kHz, so that
harmonics tens of hertz apart are resolved), one feature per bin up to
``--linear-max-hz`` and mel bands above; the feature matrix ships in the model
file and the stage computes the same numbers with the same code
(`streamer.stages.anomaly_model`). A tenth of the clips (at least
one) is held out: the error statistics and the threshold (``threshold_z``: the
highest smoothed error seen on held-out normal audio, in standard deviations,
times 1.25, and at least 4) come from it. Seeded and deterministic.

    .venv/bin/python tools/train_anomaly.py                       # models/demo-pump.npz
    .venv/bin/python tools/train_anomaly.py --normal recordings/ --name my-pump --out .
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
from anomaly_scenarios import DEMO_PUMP, DEMO_RATE, render

from streamer.dsp.stft import frames
from streamer.stages.anomaly_model import (
    FORMAT,
    AnomalyModel,
    feature_matrix,
    log_features,
    stack_windows,
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ROOT = Path(__file__).resolve().parents[1]
_TRAIN_SEED_BASE = 1_000_000  # the evaluation's seeds are small numbers; these never meet them
_AUDIO = (".wav", ".flac", ".ogg", ".aiff", ".aif")
_WINDOW = "hann"


def demo_clips(minutes: float, clip_s: float, seed: int) -> list[F64]:
    """Normal operation of the demo pump: clips alternating stationary and drifting."""
    count = max(2, math.ceil(minutes * 60 / clip_s))
    n = round(clip_s * DEMO_RATE)
    rngs = [np.random.default_rng([_TRAIN_SEED_BASE, seed, i]) for i in range(count)]
    return [render(DEMO_PUMP, rng, DEMO_RATE, n, i % 2 == 1) for i, rng in enumerate(rngs)]


def user_clips(folders: list[Path]) -> tuple[list[F64], int]:
    """Every channel of every recording under ``folders``, and their common rate."""
    paths = sorted(p for d in folders for p in d.rglob("*") if p.suffix.lower() in _AUDIO)
    if not paths:
        where = ", ".join(map(str, folders))
        raise SystemExit(f"no recordings ({', '.join(_AUDIO)}) under {where}")
    clips: list[F64] = []
    rates = set()
    for path in paths:
        try:
            data, rate = sf.read(path, dtype="float64", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise SystemExit(f"{path}: cannot read: {exc}") from exc
        rates.add(rate)
        clips.extend(np.ascontiguousarray(data.T))
    if len(rates) != 1:
        raise SystemExit(f"recordings have several rates {sorted(rates)}: resample them to one")
    return clips, rates.pop()


def windows(clip: F64, n_fft: int, hop: int, fb: F64, context: int) -> F32:
    """Stacked feature windows of one clip, (frames - context + 1, context * features)."""
    power = np.abs(frames(clip, n_fft, hop, _WINDOW)) ** 2
    return stack_windows(log_features(power, fb), context)


def smoothed_ln_errors(model: AnomalyModel, x: F32) -> F64:
    """ln error per window averaged over the card's ``smooth_frames``, as the stage does."""
    ln = np.log(model.errors(x).astype(np.float64) + 1e-10)
    k = int(model.card["smooth_frames"])
    out: F64 = np.convolve(ln, np.ones(k) / k, mode="valid")
    return out


def train(x: F32, hidden: list[int], epochs: int, seed: int) -> list[torch.nn.Linear]:
    """Fit a dense autoencoder (ReLU, linear output) to normalised ``x``; return its layers."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    sizes = [x.shape[1], *hidden, x.shape[1]]
    layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    parts: list[torch.nn.Module] = []
    for i, layer in enumerate(layers):
        parts.append(layer)
        if i < len(layers) - 1:
            parts.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*parts)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    data = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(seed)
    batch = 512
    for epoch in range(epochs):
        order = torch.randperm(data.shape[0], generator=gen)
        total = 0.0
        for i in range(0, data.shape[0], batch):
            xb = data[order[i : i + batch]]
            loss = torch.mean((net(xb) - xb) ** 2)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss) * xb.shape[0]
        sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {total / data.shape[0]:.4f}", file=sys.stderr)
    return layers


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--normal", type=Path, nargs="+", help="folders of normal recordings")
    parser.add_argument("--minutes", type=float, default=20.0, help="demo data, minutes")
    parser.add_argument("--name", default="demo-pump", help="model name (file stem)")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="output folder")
    parser.add_argument(
        "--frame-ms", type=float, default=128.0, help="frame length (fine bins for harmonics)"
    )
    parser.add_argument("--hop-ratio", type=int, default=4, help="frames per frame length")
    parser.add_argument("--fmin", type=float, default=20.0, help="lowest feature, Hz")
    parser.add_argument(
        "--linear-max-hz", type=float, default=600.0, help="one feature per bin below this"
    )
    parser.add_argument("--mels", type=int, default=24, help="mel bands above --linear-max-hz")
    parser.add_argument("--context", type=int, default=4, help="frames per input window")
    parser.add_argument("--smooth", type=int, default=4, help="errors averaged per score")
    parser.add_argument("--hidden", default="128,24,128", help="hidden layer widths")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()

    if args.normal:
        clips, rate = user_clips(args.normal)
        source = f"recordings under {', '.join(str(d) for d in args.normal)}"
    else:
        clips, rate = demo_clips(args.minutes, 40.0, args.seed), DEMO_RATE
        source = (
            f"demo pump (tools/anomaly_scenarios.py DEMO_PUMP), {len(clips)} clips of 40 s, "
            f"half drifting, seeds [{_TRAIN_SEED_BASE}, {args.seed}, i]"
        )
    n_fft = 2 * max(4, round(args.frame_ms * rate / 2000))  # even, as the stage's frames
    hop = max(1, n_fft // args.hop_ratio)
    fmax = 0.45 * rate
    fb, bands = feature_matrix(rate, n_fft, args.linear_max_hz, args.mels, args.fmin, fmax)
    held = max(1, len(clips) // 10)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(clips))
    held_out = [clips[i] for i in order[:held]]
    train_clips = [clips[i] for i in order[held:]] or held_out
    x_train, x_held = (
        np.concatenate([windows(c, n_fft, hop, fb, args.context) for c in part])
        for part in (train_clips, held_out)
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-3
    hidden = [int(h) for h in args.hidden.split(",")]
    layers = train((x_train - mean) / std, hidden, args.epochs, args.seed)

    card = {
        "format": FORMAT,
        "name": args.name,
        "rate": rate,
        "n_fft": n_fft,
        "hop": hop,
        "window": _WINDOW,
        "features": f"{fb.shape[1]}: bins {args.fmin:g}-{args.linear_max_hz:g} Hz, "
        f"{args.mels} mel bands to {fmax:g} Hz",
        "context": args.context,
        "smooth_frames": args.smooth,
        "layers": len(layers),
        "hidden": hidden,
        "error_mean": 0.0,
        "error_std": 1.0,
        "threshold_z": 4.0,
        "trained_on": source,
        "train_windows": int(x_train.shape[0]),
        "held_out_windows": int(x_held.shape[0]),
        "epochs": args.epochs,
        "seed": args.seed,
    }
    model = AnomalyModel(
        card,
        [layer.weight.detach().numpy().T.astype(np.float32).copy() for layer in layers],
        [layer.bias.detach().numpy().astype(np.float32).copy() for layer in layers],
        mean.astype(np.float32),
        std.astype(np.float32),
        fb,
        bands,
    )
    held_ln = smoothed_ln_errors(model, x_held)
    card["error_mean"] = float(held_ln.mean())
    card["error_std"] = float(held_ln.std())
    worst = float((held_ln.max() - card["error_mean"]) / card["error_std"])
    card["threshold_z"] = round(max(4.0, 1.25 * worst), 3)
    card["train_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.npz"
    model.save(path)
    params = sum(w.size + b.size for w, b in zip(model.weights, model.biases, strict=True))
    print(json.dumps(card, indent=1))
    print(
        f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {params} parameters); "
        f"held-out worst {worst:.2f} sd, threshold_z {card['threshold_z']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
