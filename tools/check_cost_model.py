"""Check the FIR cost model's picks against every algorithm, timed.

For each (taps M, block B, channels C) of the grid the FIR stage is built with
``algorithm = "auto"`` (the cost model's pick, `streamer.stages.convolution.choose_plan`)
and with each algorithm forced, and 48 kHz noise goes through each block by block. The
figure per algorithm is its mean time per block (what sets throughput and the mean
real-time factor), the median of ``--repeats`` runs, the algorithms alternating within
each repeat so that the machine's slow spells hit them alike. Per configuration it
prints the pick, the fastest and how much slower the pick is; at the end the mean and
worst of that slowdown, and the configurations where the pick is more than
``--tolerance`` slower than the fastest.

    python tools/check_cost_model.py [--taps 31 1024 65536] [--blocks 64 256]
                                     [--channels 1 8] [--repeats 3] [--seconds 1]
                                     [--csv picks.csv]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np

from streamer.block import Block, StreamLayout, whole_blocks
from streamer.config import FirConfig
from streamer.stages.fir import FirStage

RATE = 48_000
TAPS = (31, 256, 1_024, 4_096, 16_384, 65_536)
BLOCKS = (32, 64, 256, 1_024, 4_096)
CHANNELS = (1, 8)
FORCED = ("overlap-save", "partitioned", "nonuniform")


def stage_for(numtaps: int, algorithm: str, channels: int, block: int) -> FirStage:
    """A 4 kHz firwin lowpass of ``numtaps`` taps, as bench_fir's."""
    cfg = FirConfig(design="lowpass", cutoff_hz=4_000.0, numtaps=numtaps, algorithm=algorithm)
    return FirStage(cfg, StreamLayout(channels, RATE), block_hint=block)


def plan_key(stage: FirStage) -> tuple[object, ...]:
    """What distinguishes two plans' work: the algorithm family, FFT size and levels."""
    plan = stage.plan
    return (plan.algorithm == "overlap-save", plan.nfft, plan.levels)


def mean_block_us(stage: FirStage, blocks: list[Block]) -> float:
    """Mean µs per block from a reset stage."""
    stage.reset()
    start = time.perf_counter_ns()
    for b in blocks:
        stage.process(b)
    return (time.perf_counter_ns() - start) / len(blocks) / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, nargs="+", default=list(TAPS))
    parser.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS))
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--seconds", type=float, default=1.0, help="signal length, s")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="a pick this much slower than the fastest is listed")  # fmt: skip
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    frames = int(args.seconds * RATE)
    print(f"mean µs per block, median of {args.repeats} interleaved runs; {args.seconds:g} s "
          f"of 48 kHz noise; slower = pick / fastest - 1")  # fmt: skip
    print(f"{'taps':>6} {'B':>5} {'ch':>2} {'pick':<13} {'ols':>8} {'part':>8} {'nonu':>8} "
          f"{'fastest':<13} {'slower':>7}")  # fmt: skip
    rows: list[dict[str, object]] = []
    for numtaps in args.taps:
        for channels in args.channels:
            x = rng.standard_normal((channels, frames)).astype(np.float32)
            for block in args.blocks:
                blocks = whole_blocks(x, block, "check", RATE)
                auto = stage_for(numtaps, "auto", channels, block)
                forced = {a: stage_for(numtaps, a, channels, block) for a in FORCED}
                # A forced non-uniform plan of one level is the partitioned one: time each
                # distinct plan once, and the pick as the forced stage with its plan.
                distinct = {plan_key(s): s for s in forced.values()}
                for stage in distinct.values():  # warm-up: plans, caches, first touch
                    mean_block_us(stage, blocks[:20])
                times: dict[tuple[object, ...], list[float]] = {k: [] for k in distinct}
                for _ in range(args.repeats):
                    for key, stage in distinct.items():
                        times[key].append(mean_block_us(stage, blocks))
                us = {a: statistics.median(times[plan_key(s)]) for a, s in forced.items()}
                pick = next(a for a, s in forced.items() if plan_key(s) == plan_key(auto))
                fastest = min(us, key=us.__getitem__)
                slower = us[pick] / us[fastest] - 1
                print(f"{numtaps:>6} {block:>5} {channels:>2} {pick:<13} "
                      f"{us['overlap-save']:>8.1f} {us['partitioned']:>8.1f} "
                      f"{us['nonuniform']:>8.1f} {fastest:<13} {slower:>6.1%}")  # fmt: skip
                rows.append({"taps": numtaps, "block": block, "channels": channels,
                             "pick": pick, "fastest": fastest, "slower": round(slower, 4),
                             **{f"{a}_us": round(v, 2) for a, v in us.items()}})  # fmt: skip
    slowdowns = [float(str(r["slower"])) for r in rows]
    worst = max(rows, key=lambda r: float(str(r["slower"])))
    print(f"pick vs fastest over {len(rows)} configurations: mean {statistics.mean(slowdowns):.1%}"
          f" slower, worst {float(str(worst['slower'])):.1%} (M={worst['taps']} "
          f"B={worst['block']} ch={worst['channels']})")  # fmt: skip
    off = [r for r in rows if float(str(r["slower"])) > args.tolerance]
    for r in off:
        print(f"  over {args.tolerance:.0%}: M={r['taps']} B={r['block']} ch={r['channels']}: "
              f"picks {r['pick']}, {r['fastest']} is faster by {float(str(r['slower'])):.1%}")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
