"""Time the FIR stage per block against the hand-rolled scipy loop it replaces.

For each (taps, block) pair, the same stereo 48 kHz noise is filtered three ways:
the stage block by block; ``scipy.signal.lfilter`` block by block with its state
carried in ``zi`` (what people write by hand); and ``scipy.signal.oaconvolve`` on
the whole signal at once (an offline lower bound, not a streaming option).
Each is repeated and the median per-block time is reported with ratios to the
stage, so the figures mean something on a noisy machine.

    python tools/bench_fir.py [--repeats 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.signal

from streamer.block import Block, StreamLayout
from streamer.config import FirConfig
from streamer.stages.fir import FirStage

RATE = 48_000
CHANNELS = 2


def _median_s(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(numtaps: int, block: int, seconds: float, repeats: int) -> dict[str, float]:
    """Median seconds per block of each method for one configuration."""
    rng = np.random.default_rng(0)
    frames = int(seconds * RATE) // block * block
    x = rng.standard_normal((CHANNELS, frames)).astype(np.float32)
    n_blocks = frames // block
    layout = StreamLayout(CHANNELS, RATE)
    cfg = FirConfig(design="lowpass", cutoff_hz=4000.0, numtaps=numtaps)
    stage = FirStage(cfg, layout, block_hint=block)
    taps = stage.taps[0]
    blocks = [
        Block(np.ascontiguousarray(x[:, i : i + block]), "b", k, i, RATE, 0)
        for k, i in enumerate(range(0, frames, block))
    ]

    def run_stage() -> None:
        stage.reset()
        for b in blocks:
            stage.process(b)

    def run_lfilter() -> None:
        zi = np.zeros((CHANNELS, numtaps - 1))
        for b in blocks:
            _, zi = scipy.signal.lfilter(taps, 1.0, b.samples, axis=-1, zi=zi)

    def run_oaconvolve() -> None:
        scipy.signal.oaconvolve(x, taps[np.newaxis, :], axes=-1)

    return {
        "stage": _median_s(run_stage, repeats) / n_blocks,
        "lfilter": _median_s(run_lfilter, repeats) / n_blocks,
        "oaconvolve": _median_s(run_oaconvolve, repeats) / n_blocks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"stereo {RATE} Hz noise, {args.seconds} s, median of {args.repeats}; µs per block")
    print(
        f"{'taps':>6} {'block':>6} {'period':>8} {'stage':>9} {'lfilter+zi':>11} "
        f"{'oaconvolve':>11} {'lfilter/stage':>14} {'stage/oaconv':>13}"
    )
    for numtaps in (31, 511, 4095):
        for block in (64, 256, 1024, 4096):
            r = bench(numtaps, block, args.seconds, args.repeats)
            print(
                f"{numtaps:>6} {block:>6} {block / RATE * 1e6:>8.0f} {r['stage'] * 1e6:>9.1f} "
                f"{r['lfilter'] * 1e6:>11.1f} {r['oaconvolve'] * 1e6:>11.1f} "
                f"{r['lfilter'] / r['stage']:>14.2f} {r['stage'] / r['oaconvolve']:>13.2f}"
            )


if __name__ == "__main__":
    main()
