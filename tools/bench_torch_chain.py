"""Time a chain of torch FIR stages with tensors handed on, against a trip through numpy.

A chain of ``--stages`` torch FIR stages on one device (each a ``--taps`` lowpass) is fed
48 kHz noise in blocks of B frames, twice over, alternating ``--repeats`` times:

- *handed on*: as `streamer.stages.build_stages` links it, each stage gives the next a
  tensor on the device, so a block crosses to the device once and back once;
- *through numpy*: every stage's ``hands_off_tensors`` cleared, so each one takes its
  block from host memory and returns it there (what a chain of stages did before).

Per-block medians of each run, the median over runs, and their ratio. On CUDA a block's
time includes its copy back, so the GPU's work is all in it. The outputs of the two are
checked to be equal.

    python tools/bench_torch_chain.py [--device cuda] [--stages 3] [--taps 4096]
                                      [--blocks 64 256 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from streamer.block import Block, StreamLayout, whole_blocks
from streamer.config import FirConfig
from streamer.stages import Stage, build_stages

RATE = 48_000


def chain(device: str, stages: int, numtaps: int, block: int, channels: int) -> list[Stage]:
    config = FirConfig(
        design="lowpass", cutoff_hz=8_000.0, numtaps=numtaps, backend="torch", device=device
    )
    return build_stages([config] * stages, StreamLayout(channels, RATE), block=block)


def run_once(stages: list[Stage], blocks: list[Block], hand_on: bool) -> tuple[float, np.ndarray]:
    """Median ns per block from reset stages, and the chain's last output."""
    for stage in stages[:-1]:
        stage.hands_off_tensors = hand_on  # type: ignore[attr-defined]
    for stage in stages:
        stage.reset()
    clock = time.perf_counter_ns
    times = []
    out = blocks[0]
    for b in blocks:
        start = clock()
        out = b
        for stage in stages:
            out = stage.process(out)
        times.append(clock() - start)
    return statistics.median(times), out.samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--stages", type=int, default=3, help="torch FIR stages in the chain")
    parser.add_argument("--taps", type=int, default=4_096, help="taps of each stage")
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 256, 1_024])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0, help="signal per run, s")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each (median)")
    args = parser.parse_args(argv)
    if args.stages < 2:
        parser.error("--stages must be at least 2: one stage has no one to hand a tensor to")

    frames = int(args.seconds * RATE)
    x = np.random.default_rng(0).standard_normal((args.channels, frames)).astype(np.float32)
    print(f"{args.stages} torch FIR stages of {args.taps} taps on {args.device}, "
          f"{args.channels} ch at {RATE} Hz; per-block medians of {args.repeats} runs")
    print(f"{'B':>6} {'handed on us':>13} {'via numpy us':>13} {'ratio':>6} {'RTF':>8}")
    for block in args.blocks:
        stages = chain(args.device, args.stages, args.taps, block, args.channels)
        blocks = whole_blocks(x, block, "bench", RATE)
        run_once(stages, blocks[:20], True)  # warm-up: allocator, FFT plans
        run_once(stages, blocks[:20], False)
        handed, via_numpy = [], []
        for _ in range(args.repeats):
            t_on, y_on = run_once(stages, blocks, True)
            t_off, y_off = run_once(stages, blocks, False)
            handed.append(t_on)
            via_numpy.append(t_off)
        if not np.array_equal(y_on, y_off):
            raise AssertionError("handing tensors on changed the output")
        on, off = statistics.median(handed), statistics.median(via_numpy)
        rtf = on * 1e-9 / (block / RATE)
        print(f"{block:>6} {on / 1e3:>13.1f} {off / 1e3:>13.1f} {off / on:>6.2f} {rtf:>8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
