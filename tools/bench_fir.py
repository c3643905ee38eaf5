"""Time the FIR stage per block against streaming lfilter, offline oaconvolve and GNU Radio.

For each (taps M, block B, channels C) of the grid, the same 48 kHz noise is filtered by:

- the stage (``FirStage``, ``algorithm`` auto unless ``--algorithm``), block by block, each
  block timed alone with ``perf_counter_ns``: median and p99 per block, real-time factor
  (processing time / signal duration) and throughput (samples of all channels per second);
- ``scipy.signal.lfilter`` block by block with its state in ``zi`` (what people write by
  hand), for at most ``--lfilter-budget`` seconds per configuration (a 262144-tap lfilter
  runs ~5x slower than real time): the mean of the blocks it got through, extrapolated;
- ``scipy.signal.oaconvolve`` on the whole signal at once, an offline lower bound that no
  stream can use (it also computes the M - 1 samples of the tail, mode "full");
- GNU Radio's ``filter.fft_filter_fff`` in a flowgraph (``vector_source_f -> fft_filter_fff
  -> vector_sink_f``, one chain per channel, pinned to one CPU) when a Python with GNU
  Radio is found, on a signal of at least 8 M frames (its FFT hop is ~M frames and it
  emits whole hops only): its own throughput-oriented chunking, not our block size.

Each stage/oaconvolve/GNU Radio figure is the median of ``--repeats`` runs, stage and
oaconvolve runs alternating; the machine is noisy, so compare ratios within one run. A
default run takes ~1.5 minutes on 2 cores.

    python tools/bench_fir.py [--taps 65536] [--blocks 64 256] [--channels 1]
                              [--repeats 3] [--seconds 2] [--csv fir.csv]
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.signal

from streamer.block import Block, StreamLayout, whole_blocks
from streamer.config import FirConfig
from streamer.stages.convolution import make_convolver
from streamer.stages.fir import FirStage

RATE = 48_000
TAPS = (31, 1_024, 16_384, 65_536, 262_144)
BLOCKS = (32, 64, 256, 1_024, 4_096)
CHANNELS = (1, 8)
ALGORITHMS = ("auto", "overlap-save", "partitioned", "nonuniform")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# Run by a Python that has GNU Radio (Debian's python3-gnuradio is built for
# /usr/bin/python3, not for the venv): argv = taps.npy x.npy repeats out.npy.
GNURADIO_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    from gnuradio import blocks, filter, gr

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, like the stage
    taps = np.load(sys.argv[1]).tolist()
    x = np.load(sys.argv[2])
    times, sinks = [], []
    for _ in range(int(sys.argv[3])):
        tb = gr.top_block()
        sinks = []
        for row in x:
            src = blocks.vector_source_f(row.tolist(), False)
            fir = filter.fft_filter_fff(1, taps, 1)
            sink = blocks.vector_sink_f()
            tb.connect(src, fir, sink)
            sinks.append(sink)
        start = time.perf_counter()
        tb.run()
        times.append(time.perf_counter() - start)
    first = np.asarray(sinks[0].data(), dtype=np.float32)
    np.save(sys.argv[4], first)
    produced = sum(len(s.data()) for s in sinks)
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "samples": produced}))
    """
)


@dataclass
class Row:
    """One configuration's results; times in microseconds unless named otherwise."""

    taps: int
    block: int
    channels: int
    algorithm: str
    levels: str
    stage_median_us: float
    stage_p99_us: float
    stage_rtf: float
    stage_misses: float
    stage_msps: float
    lfilter_block_us: float
    lfilter_blocks: int
    lfilter_of_blocks: int
    lfilter_rtf: float
    lfilter_over_stage: float
    oaconvolve_msps: float
    stage_over_oaconvolve: float
    gnuradio_msps: float | None
    stage_over_gnuradio: float | None
    gnuradio_max_rel_err: float | None


def design(numtaps: int) -> F64:
    """A 4 kHz lowpass of ``numtaps`` taps, as the stage designs it."""
    return np.asarray(
        scipy.signal.firwin(numtaps, 4_000.0, window="hamming", fs=RATE), dtype=np.float64
    )


def build_stage(
    x: F32, numtaps: int, block: int, algorithm: str, precision: str, backend: str = "numpy",
    device: str = "cpu", fft_library: str = "auto", kernel: str = "auto", fft_workers: int = 1,
) -> tuple[FirStage, list[Block]]:
    """The stage for one configuration and ``x`` cut into its blocks, warmed up."""
    channels = x.shape[0]
    cfg = FirConfig.model_validate(
        {
            "design": "lowpass",
            "cutoff_hz": 4_000.0,
            "numtaps": numtaps,
            "algorithm": algorithm,
            "precision": precision,
            "backend": backend,
            "device": device,
            "fft_library": fft_library,
            "kernel": kernel,
            "fft_workers": fft_workers,
        }
    )
    stage = FirStage(cfg, StreamLayout(channels, RATE), block_hint=block)
    blocks = whole_blocks(x, block, "bench", RATE)
    for b in blocks[:20]:  # warm-up: FFT plan caches, first touch of the buffers
        stage.process(b)
    return stage, blocks


def time_stage_once(stage: FirStage, blocks: list[Block]) -> list[int]:
    """ns of each block, from a reset stage."""
    stage.reset()
    clock = time.perf_counter_ns
    times = [0] * len(blocks)
    for k, b in enumerate(blocks):
        start = clock()
        stage.process(b)
        times[k] = clock() - start
    return times


def time_lfilter(x: F32, taps: F64, block: int, budget_s: float) -> tuple[float, int, int]:
    """Mean ns per block of streaming lfilter with zi, and blocks timed of blocks available."""
    channels, frames = x.shape
    n_blocks = frames // block
    zi = np.zeros((channels, taps.size - 1))
    total = 0
    done = 0
    deadline = time.perf_counter_ns() + int(budget_s * 1e9)
    for k in range(n_blocks):
        chunk = x[:, k * block : (k + 1) * block]
        start = time.perf_counter_ns()
        _, zi = scipy.signal.lfilter(taps, 1.0, chunk, axis=-1, zi=zi)
        end = time.perf_counter_ns()
        total += end - start
        done += 1
        if end > deadline and done >= 2:
            break
    return total / done, done, n_blocks


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of unmapping it.

    oaconvolve allocates ~10 MB of temporaries per call. Served by fresh mappings, their
    first-touch page faults halve its throughput here (M = 65536 mono: 16-18 against
    34-37 Msps), and which a run gets depends on what the process freed before (glibc's
    mmap threshold adapts to it). Fixed at oaconvolve's best case, the stricter
    comparison for the stage, which allocates only its small outputs. False where
    there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mmap_ok = libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    trim_ok = libc.mallopt(m_trim_threshold, 1 << 30)
    return bool(mmap_ok and trim_ok)


def time_oaconvolve_once(x: F32, taps: F64) -> float:
    """Seconds of one oaconvolve over the whole signal (mode "full")."""
    start = time.perf_counter()
    scipy.signal.oaconvolve(x, taps[np.newaxis, :], axes=-1)
    return time.perf_counter() - start


def find_gnuradio(requested: str | None) -> str | None:
    """A Python interpreter that can import gnuradio.filter, or None."""
    candidates = [requested] if requested else [sys.executable, "/usr/bin/python3"]
    for python in candidates:
        if python is None or not (Path(python).exists() or shutil.which(python)):
            continue
        probe = subprocess.run(
            [python, "-c", "import gnuradio.filter"], capture_output=True, timeout=60
        )
        if probe.returncode == 0:
            return python
    return None


def time_gnuradio(
    python: str, taps: F64, channels: int, seconds: float, repeats: int
) -> tuple[float, float]:
    """GNU Radio's throughput, samples/s of all channels, and its max error vs oaconvolve."""
    frames = max(int(seconds * RATE), 8 * taps.size)
    rng = np.random.default_rng(1)
    x = (0.25 * rng.standard_normal((channels, frames))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / name for name in ("taps.npy", "x.npy", "y.npy")]
        np.save(paths[0], taps)
        np.save(paths[1], x)
        done = subprocess.run(
            [python, "-c", GNURADIO_SCRIPT, *map(str, paths[:2]), str(repeats), str(paths[2])],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        first = np.load(paths[2])
    n = first.size
    ref = scipy.signal.oaconvolve(x[0, :n].astype(np.float64), taps)[:n]
    err = float(np.max(np.abs(first - ref), initial=0.0) / max(np.max(np.abs(ref)), 1e-30))
    return result["samples"] / result["seconds"], err


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the table (and the issue's targets), optionally write a CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--taps", type=int, nargs="+", default=list(TAPS), help="filter lengths")
    parser.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS), help="frames")
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--seconds", type=float, default=4.0, help="signal length, s")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="auto")
    parser.add_argument("--precision", choices=("float64", "float32"), default="float64")
    parser.add_argument("--fft-library", choices=("auto", "scipy", "pyfftw"), default="auto")
    parser.add_argument(
        "--kernel", choices=("auto", "numba", "numpy"), default="auto",
        help="the partitioned algorithms' per-block path (numpy backend)",
    )  # fmt: skip
    parser.add_argument(
        "--fft-workers", type=int, default=1, help="the stage's fft_workers (large transforms)"
    )
    parser.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch's")
    parser.add_argument(
        "--batch-streams", type=int, nargs="+",
        help="instead of the grid: time S streams batched in one convolver, for each S, and "
        "say how many keep up in real time (first --taps and --blocks)",
    )  # fmt: skip
    parser.add_argument(
        "--lfilter-budget", type=float, default=0.25, help="seconds of lfilter per config"
    )
    parser.add_argument("--gnuradio-python", help="interpreter with GNU Radio (default: probe)")
    parser.add_argument("--no-gnuradio", action="store_true", help="skip GNU Radio")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.batch_streams:
        return batch_capacity(args)

    warm_heap = keep_freed_memory()
    gr_python = None if args.no_gnuradio else find_gnuradio(args.gnuradio_python)
    gr_note = f"GNU Radio via {gr_python} (1 CPU)" if gr_python else "GNU Radio: not found"
    print(
        f"{RATE} Hz noise, {args.seconds:g} s, stage/oaconvolve/GNU Radio median of "
        f"{args.repeats}; lfilter+zi at most {args.lfilter_budget:g} s per config; "
        f"algorithm {args.algorithm}, {args.precision}, kernel {args.kernel}, "
        f"fft_workers {args.fft_workers}; {gr_note}; "
        f"freed memory {'kept (oaconvolve at its best)' if warm_heap else 'returned'}"
    )
    print(
        "Msps = million samples (all channels) per second; miss% = blocks slower than their "
        "period (deadline misses); x/y columns are ratios"
    )
    head = (
        f"{'taps':>6} {'B':>4} {'ch':>2} {'algorithm':<12} {'med us':>8} {'p99 us':>8} "
        f"{'RTF':>7} {'miss%':>5} {'Msps':>6} | {'lfilt us':>9} {'(blocks)':>9} {'lf/stage':>8} | "
        f"{'oa Msps':>7} {'st/oa':>5} | {'gr Msps':>7} {'st/gr':>5}"
    )
    print(head)
    rows: list[Row] = []
    rng = np.random.default_rng(0)
    gr_cache: dict[tuple[int, int], tuple[float, float] | None] = {}
    for numtaps in args.taps:
        taps = design(numtaps)
        for channels in args.channels:
            frames = int(args.seconds * RATE)
            x = (0.25 * rng.standard_normal((channels, frames))).astype(np.float32)
            if gr_python and (numtaps, channels) not in gr_cache:
                try:
                    gr_cache[numtaps, channels] = time_gnuradio(
                        gr_python, taps, channels, args.seconds, args.repeats
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"GNU Radio failed for M={numtaps}, C={channels}: {exc}")
                    gr_cache[numtaps, channels] = None
            gr = gr_cache.get((numtaps, channels))
            for block in args.blocks:
                used = frames // block * block
                stage, blocks = build_stage(
                    x[:, :used], numtaps, block, args.algorithm, args.precision, args.backend,
                    args.device, args.fft_library, args.kernel, args.fft_workers,
                )
                # Stage and oaconvolve alternate, so that a slow spell of this (shared,
                # noisy) machine hits both sides of their ratio alike.
                per_block: list[int] = []
                totals: list[int] = []
                oa_times: list[float] = []
                for _ in range(args.repeats):
                    times = time_stage_once(stage, blocks)
                    per_block.extend(times)
                    totals.append(sum(times))
                    oa_times.append(time_oaconvolve_once(x, taps))
                oa_msps = channels * frames / statistics.median(oa_times) / 1e6
                total_s = statistics.median(totals) / 1e9
                stage_mean_us = total_s / (used // block) * 1e6
                lf_ns, lf_done, lf_of = time_lfilter(x, taps, block, args.lfilter_budget)
                period_us = block / RATE * 1e6
                stage_msps = channels * used / total_s / 1e6
                levels = " ".join(f"{lv.size}x{lv.count}" for lv in stage.plan.levels)
                row = Row(
                    taps=numtaps,
                    block=block,
                    channels=channels,
                    algorithm=stage.algorithm,
                    levels=levels or f"nfft={stage.nfft}",
                    stage_median_us=float(np.median(per_block)) / 1e3,
                    stage_p99_us=float(np.percentile(per_block, 99)) / 1e3,
                    stage_rtf=stage_mean_us / period_us,
                    stage_misses=float(np.mean(np.asarray(per_block) > period_us * 1e3)),
                    stage_msps=stage_msps,
                    lfilter_block_us=lf_ns / 1e3,
                    lfilter_blocks=lf_done,
                    lfilter_of_blocks=lf_of,
                    lfilter_rtf=lf_ns / 1e3 / period_us,
                    lfilter_over_stage=lf_ns / 1e3 / stage_mean_us,
                    oaconvolve_msps=oa_msps,
                    stage_over_oaconvolve=stage_msps / oa_msps,
                    gnuradio_msps=gr[0] / 1e6 if gr else None,
                    stage_over_gnuradio=stage_msps / (gr[0] / 1e6) if gr else None,
                    gnuradio_max_rel_err=gr[1] if gr else None,
                )
                rows.append(row)
                lf_blocks = f"({lf_done}/{lf_of})"
                gr_cols = (
                    f"{row.gnuradio_msps:>7.2f} {row.stage_over_gnuradio:>5.2f}"
                    if row.gnuradio_msps is not None and row.stage_over_gnuradio is not None
                    else f"{'-':>7} {'-':>5}"
                )
                print(
                    f"{numtaps:>6} {block:>4} {channels:>2} {row.algorithm:<12} "
                    f"{row.stage_median_us:>8.1f} {row.stage_p99_us:>8.1f} "
                    f"{row.stage_rtf:>7.4f} {100 * row.stage_misses:>5.2f} {stage_msps:>6.2f} | "
                    f"{row.lfilter_block_us:>9.0f} "
                    f"{lf_blocks:>9} {row.lfilter_over_stage:>8.1f} | "
                    f"{oa_msps:>7.2f} {row.stage_over_oaconvolve:>5.2f} | {gr_cols}",
                    flush=True,
                )
    report_targets(rows)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) if rows else [])
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
        print(f"wrote {args.csv}")
    return 0


def batch_capacity(args: argparse.Namespace) -> int:
    """S 48 kHz mono streams through one batched convolver: per-block time and RTF for each S.

    The streams keep up while the p99 block time stays under the block period; the
    largest such S is what one machine (or GPU) carries for this filter and block.
    """
    numtaps, block = args.taps[0], args.blocks[0]
    taps = design(numtaps)
    period_us = block / RATE * 1e6
    print(f"M={numtaps}, B={block} ({period_us:.0f} us), {args.backend} on {args.device}, "
          f"{args.precision}; median of {args.repeats} runs of {args.seconds:g} s")
    print(f"{'streams':>7} {'med us':>9} {'p99 us':>9} {'RTF':>7} {'Msps':>7} {'keeps up':>8}")
    rng = np.random.default_rng(0)
    carried = 0
    for streams in args.batch_streams:
        conv = make_convolver(taps, streams=streams, channels=1, block=block,
                              algorithm=args.algorithm, precision=args.precision,
                              backend=args.backend, device=args.device,
                              fft_library=args.fft_library,
                              kernel=args.kernel if args.backend == "numpy" else "auto",
                              workers=args.fft_workers)
        count = int(args.seconds * RATE) // block
        x = (0.25 * rng.standard_normal((streams, 1, block))).astype(np.float32)
        out = np.empty_like(x)
        for _ in range(20):
            conv.process(x, out)
        times: list[int] = []
        for _ in range(args.repeats):
            conv.reset()
            for _ in range(count):
                start = time.perf_counter_ns()
                conv.process(x, out)
                times.append(time.perf_counter_ns() - start)
        med, p99 = float(np.median(times)) / 1e3, float(np.percentile(times, 99)) / 1e3
        mean = float(np.mean(times)) / 1e3
        keeps = p99 < period_us
        carried = streams if keeps else carried
        print(f"{streams:>7} {med:>9.1f} {p99:>9.1f} {mean / period_us:>7.4f} "
              f"{streams * block / mean:>7.2f} {'yes' if keeps else 'no':>8}", flush=True)
    print(f"largest batch that keeps up (p99 < period): {carried or 'none'} stream(s)")
    return 0


def report_targets(rows: list[Row]) -> None:
    """The issue's targets (mono, 65536 taps), for the rows this run has."""
    by_block = {r.block: r for r in rows if r.taps == 65_536 and r.channels == 1}
    if 256 in by_block:
        r = by_block[256]
        print(
            f"target M=65536 B=256 mono: lfilter/stage {r.lfilter_over_stage:.0f}x (>= 30: "
            f"{'met' if r.lfilter_over_stage >= 30 else 'MISSED'}); stage throughput "
            f"{r.stage_over_oaconvolve:.2f} of oaconvolve's (>= 1/1.5 = 0.67: "
            f"{'met' if r.stage_over_oaconvolve >= 1 / 1.5 else 'MISSED'})"
        )
    if 64 in by_block:
        r = by_block[64]
        print(
            f"target M=65536 B=64 mono: RTF {r.stage_rtf:.4f} (<= 0.025: "
            f"{'met' if r.stage_rtf <= 0.025 else 'MISSED'})"
        )


if __name__ == "__main__":
    sys.exit(main())
