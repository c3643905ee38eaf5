"""``streamer bench [CONFIG]``: the latency/block-size sweep with its table, CSV, JSON and plot."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from streamer.bench import BACKENDS, run_sweep
from streamer.bench_report import HEADER, table, table_row, write_outputs
from streamer.config import load_stream
from streamer.errors import ConfigError

DEFAULT_BLOCKS = tuple(2**k for k in range(5, 14))  # 32 ... 8192


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure latency against block size",
        description="Sweep block sizes through the configured pipeline (the embedded default "
        "without CONFIG): processing time per block and per stage, deadline misses, real-time "
        "factor, CPU time, and end-to-end latency to a subscriber process over loopback "
        "ZeroMQ. Writes bench.csv, bench.json and bench.png.",
    )
    parser.add_argument("config", nargs="?", type=Path, help="TOML config file")
    parser.add_argument(
        "--blocks",
        type=_block_list,
        default=DEFAULT_BLOCKS,
        help="comma-separated block sizes (default: powers of two from 32 to 8192)",
    )
    parser.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="recommend the smallest block whose p99 processing is under this share of its "
        "period (default 0.5)",
    )
    parser.add_argument("--streams", type=int, default=1, help="run N streams at once (default 1)")
    parser.add_argument(
        "--backends",
        type=_backend_list,
        default=BACKENDS,
        help="comma-separated compute backends to sweep, each where it changes the pipeline "
        "and is present: numpy (always), torch (FIR stages on torch's CPU kernels), cuda (FIR "
        "and learned denoiser on the GPU); default all",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument("--cpu", type=int, help="pin the pipeline to this CPU core")
    parser.add_argument(
        "--no-latency", action="store_true", help="skip the real-time end-to-end measurement"
    )
    parser.add_argument(
        "--no-knee",
        action="store_true",
        help="do not extend the sweep below the smallest block to find where misses begin",
    )
    parser.set_defaults(handler=handle)


def _block_list(text: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not blocks or min(blocks) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: block sizes must be at least 1")
    return blocks


def _backend_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: backends are a comma-separated list of {', '.join(BACKENDS)}"
        )
    return names


def handle(args: argparse.Namespace) -> int:
    cfg = load_stream(args.config)
    if not 0 < args.share <= 1:
        raise ConfigError(f"--share {args.share} must be in (0, 1]")
    if args.streams < 1:
        raise ConfigError(f"--streams {args.streams} must be at least 1")
    probe_cpus = None
    if args.cpu is not None:
        usable = os.sched_getaffinity(0)
        if args.cpu not in usable:
            raise ConfigError(f"--cpu {args.cpu} is not one of the usable cores {sorted(usable)}")
        # Threads started from now on inherit the pin; the subscriber gets the other cores.
        os.sched_setaffinity(0, {args.cpu})
        probe_cpus = (usable - {args.cpu}) or usable
    print(HEADER, file=sys.stderr)  # rows as they are measured; the table again at the end
    report = run_sweep(
        cfg,
        args.blocks,
        share=args.share,
        streams=args.streams,
        latency=not args.no_latency,
        find_knee=not args.no_knee,
        backends=args.backends,
        probe_cpus=probe_cpus,
        on_point=lambda point: print(table_row(point), file=sys.stderr),
    )
    print(table(report))
    for path in write_outputs(report, args.out):
        print(f"wrote {path}")
    return 0
