"""Time the resample stage, block by block, against scipy on the whole signal at once.

For each rate pair, block size B and channel count C, the same noise goes through:

- the stage (``ResampleStage``), streamed in blocks of B: the total wall time, the median
  per block and the real-time factor (processing time / signal duration);
- ``scipy.signal.resample_poly`` and ``scipy.signal.upfirdn`` (same filter) on the whole
  signal: offline lower bounds that no stream can use.

Each figure is the median of ``--repeats`` runs. A default run takes ~10 s on 2 cores.

    python tools/bench_resample.py [--seconds 5] [--blocks 256 4096] [--channels 1 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.signal

from streamer.block import Block, StreamLayout
from streamer.config import ResampleConfig
from streamer.stages.resample import ResampleStage

PAIRS = ((48_000, 16_000), (44_100, 48_000), (25_600, 16_000), (16_000, 48_000))


def _stage_run(stage: ResampleStage, x: np.ndarray, block: int) -> tuple[float, float]:
    """(total s, median per-block s) of streaming ``x`` in blocks of ``block``."""
    stage.reset()
    rate = stage.layout.rate
    blocks = [
        Block(np.ascontiguousarray(x[:, i : i + block]), "b", k, i, rate, 0)
        for k, i in enumerate(range(0, x.shape[1], block))
    ]
    times = []
    for b in blocks:
        t = time.perf_counter_ns()
        stage.process(b)
        times.append(time.perf_counter_ns() - t)
    return sum(times) / 1e9, statistics.median(times) / 1e9


def _timed(repeats: int, fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Median wall time of ``fn(*args, **kwargs)``, seconds."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args, **kwargs)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'rates':>14} {'B':>5} {'C':>2} {'stage ms':>9} {'per block us':>12} "
          f"{'RTF':>8} {'resample_poly ms':>16} {'upfirdn ms':>10} {'ratio':>6}")  # fmt: skip
    for rate_in, rate_out in PAIRS:
        for channels in args.channels:
            x = (
                np.random.default_rng(0)
                .standard_normal((channels, int(args.seconds * rate_in)))
                .astype(np.float32)
            )
            x64 = x.astype(np.float64)
            for block in args.blocks:
                stage = ResampleStage(
                    ResampleConfig(rate=rate_out), StreamLayout(channels, rate_in),
                    block_hint=block,
                )  # fmt: skip
                runs = [_stage_run(stage, x, block) for _ in range(args.repeats)]
                total = statistics.median(r[0] for r in runs)
                per_block = statistics.median(r[1] for r in runs)
                up, down, reps = stage.up, stage.down, args.repeats
                poly = _timed(reps, scipy.signal.resample_poly, x, up, down, axis=1)
                fir = _timed(reps, scipy.signal.upfirdn, stage.taps, x64, up, down, axis=1)
                print(
                    f"{rate_in:>6}->{rate_out:<6} {block:>5} {channels:>2} {total * 1e3:>9.1f} "
                    f"{per_block * 1e6:>12.1f} {total / args.seconds:>8.5f} {poly * 1e3:>16.1f} "
                    f"{fir * 1e3:>10.1f} {total / poly:>6.1f}"
                )


if __name__ == "__main__":
    main()
