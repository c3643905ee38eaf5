"""Time the first second of a config's stage chain, block by block, from a fresh process.

A live stream meets whatever a stage does lazily (a kernel compiled or loaded, a first
network call) in the middle of its first blocks. This builds the chain of CONFIG (the
embedded default without one) for its source's layout, feeds it one second of noise in
blocks of ``--block`` frames and prints the build time, the first blocks' times, the
slowest block and where it fell, beside the median block: the peer a warm stream pays.

    python tools/first_blocks.py [CONFIG] [--block 256] [--rate 48000] [--channels 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from streamer.block import StreamLayout, whole_blocks
from streamer.config import load_config
from streamer.stages import build_stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", help="a TOML config (default: embedded)")
    parser.add_argument("--block", type=int, default=256, help="frames per block")
    parser.add_argument("--rate", type=int, default=48_000, help="Hz")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--first", type=int, default=6, help="first blocks to list")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, environ={})
    start = time.perf_counter()
    stages = build_stages(cfg.stages, StreamLayout(args.channels, args.rate), block=args.block)
    built_s = time.perf_counter() - start
    x = (0.1 * np.random.default_rng(0).standard_normal((args.channels, args.rate)))
    times_us = []
    for block in whole_blocks(x.astype(np.float32), args.block, "first", args.rate):
        start_ns = time.perf_counter_ns()
        for stage in stages:
            block = stage.process(block)
        times_us.append((time.perf_counter_ns() - start_ns) / 1e3)
    slowest = int(np.argmax(times_us))
    print(f"stages {[s.name for s in stages]} built in {built_s:.2f} s; {len(times_us)} blocks "
          f"of {args.block} at {args.rate} Hz")  # fmt: skip
    print("first blocks, us: " + " ".join(f"{t:.0f}" for t in times_us[: args.first]))
    print(f"slowest block: {times_us[slowest]:.0f} us (block {slowest}); "
          f"median {statistics.median(times_us):.1f} us")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
