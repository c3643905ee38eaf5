"""Presents a `BenchReport`: a terminal table, CSV, JSON and a latency/block-size plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from streamer.bench import BenchPoint, BenchReport

__all__ = ["csv_rows", "table", "write_outputs"]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def csv_rows(report: BenchReport) -> list[dict[str, Any]]:
    """One flat row per block size, per-stage columns included."""
    rows = []
    for p in report.points:
        e2e = p.end_to_end_ms or {}
        row: dict[str, Any] = {
            "block": p.block,
            "rate": p.rate,
            "streams": p.streams,
            "backend": p.backend,
            "period_ms": p.period_ms,
            "algorithmic_latency_samples": p.algorithmic_latency_samples,
            "algorithmic_latency_ms": p.algorithmic_latency_ms,
            "blocks_measured": p.blocks_measured,
            "processing_p50_ms": p.processing_ms["p50"],
            "processing_p99_ms": p.processing_ms["p99"],
            "processing_max_ms": p.processing_ms["max"],
            "miss_rate": p.miss_rate,
            "rtf": p.rtf,
            "cpu_per_signal_s": p.cpu_per_signal_s,
            "realtime_streams": p.realtime_streams,
            "end_to_end_p50_ms": e2e.get("p50"),
            "end_to_end_p99_ms": e2e.get("p99"),
            "end_to_end_max_ms": e2e.get("max"),
            "end_to_end_count": p.end_to_end_count,
            "live_dropped_blocks": p.live_dropped_blocks,
            "live_deadline_misses": p.live_deadline_misses,
        }
        for name, stage in p.stages_ms.items():
            row[f"{name}_p50_ms"] = stage["p50"]
            row[f"{name}_p99_ms"] = stage["p99"]
        rows.append(row)
    return rows


HEADER = (
    f"{'block':>6} {'period':>8} {'algo':>8} {'proc p50':>9} {'p99':>8} {'max':>8} "
    f"{'miss %':>7} {'RTF':>7} {'CPU s/s':>8} {'e2e p50':>8} {'e2e p99':>8} {'drops':>6} "
    f"{'streams':>8} {'backend':>8}"
)


def table_row(p: BenchPoint) -> str:
    e2e = p.end_to_end_ms or {}
    return (
        f"{p.block:>6} {_fmt(p.period_ms):>8} {_fmt(p.algorithmic_latency_ms):>8} "
        f"{_fmt(p.processing_ms['p50']):>9} {_fmt(p.processing_ms['p99']):>8} "
        f"{_fmt(p.processing_ms['max']):>8} {_fmt(100 * p.miss_rate, 1):>7} {_fmt(p.rtf, 4):>7} "
        f"{_fmt(p.cpu_per_signal_s, 4):>8} {_fmt(e2e.get('p50')):>8} {_fmt(e2e.get('p99')):>8} "
        f"{p.live_dropped_blocks:>6} {_fmt(p.realtime_streams, 0):>8} {p.backend:>8}"
    )


def table(report: BenchReport) -> str:
    """The sweep as a fixed-width table (times in ms), with the conclusions under it."""
    m = report.machine
    lines = [
        f"machine: {m['cpu']}, {m['cores_usable']}/{m['cores']} cores usable, "
        f"python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}, torch {m['torch']}, "
        f"device {m['device']}",
        "times in ms; period = block / rate; algo = block + stage latencies; RTF = processing / "
        "signal time; streams = real-time streams carried flat out",
        HEADER,
        *(table_row(p) for p in report.points),
    ]
    share = f"{100 * report.share:.0f} %"
    for backend, found in report.backends.items():
        lines.append(
            f"{backend}: recommended block {found['recommended_block']} (smallest with p99 "
            f"processing <= {share} of the period); deadline misses begin below "
            f"{found['knee_block']}"
        )
    lines += [f"{backend}: not measured ({why})" for backend, why in
              report.skipped_backends.items()]  # fmt: skip
    return "\n".join(lines)


def plot(report: BenchReport, path: Path) -> None:
    """Latency components against block size on log axes, deadline and recommendation marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = report.points[0].backend if report.points else ""
    pts = [p for p in report.points if p.backend == first]
    blocks = [p.block for p in pts]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    ax.plot(blocks, [p.period_ms for p in pts], "k--", label="block period (deadline)")
    ax.plot(blocks, [report.share * p.period_ms for p in pts], "k:",
            label=f"{100 * report.share:.0f} % of period")  # fmt: skip
    ax.plot(blocks, [p.algorithmic_latency_ms for p in pts], "-", color="tab:purple",
            label="algorithmic latency")  # fmt: skip
    ax.plot(blocks, [p.processing_ms["p50"] for p in pts], "o-", color="tab:blue",
            label="processing p50")  # fmt: skip
    ax.plot(blocks, [p.processing_ms["p99"] for p in pts], "s-", color="tab:orange",
            label="processing p99")  # fmt: skip
    for name in pts[0].stages_ms if pts else []:
        ax.plot(blocks, [p.stages_ms[name]["p99"] for p in pts], ".-", lw=0.8, alpha=0.7,
                label=f"  {name} p99")  # fmt: skip
    others = [b for b in report.backends if b != first]
    for backend, colour in zip(others, ("tab:brown", "tab:pink"), strict=False):
        other = [p for p in report.points if p.backend == backend]
        ax.plot([p.block for p in other], [p.processing_ms["p99"] for p in other], "D--",
                color=colour, label=f"processing p99, {backend} backend")  # fmt: skip
    e2e = [(p.block, p.end_to_end_ms["p99"]) for p in pts if p.end_to_end_ms]
    if e2e:
        ax.plot(*zip(*e2e, strict=True), "^-", color="tab:green",
                label="end to end p99 (capture → subscriber)")  # fmt: skip
    if report.knee_block is not None and report.knee_block > min(blocks):
        ax.axvspan(min(blocks), report.knee_block, color="tab:red", alpha=0.08,
                   label="misses deadlines")  # fmt: skip
    if report.recommended_block is not None:
        ax.axvline(report.recommended_block, color="tab:green", lw=2, alpha=0.5,
                   label=f"recommended block {report.recommended_block} ({first})")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("block size (samples)")
    ax.set_ylabel("milliseconds")
    rate = pts[0].rate if pts else 0
    m = report.machine
    ax.set_title(f"latency against block size at {rate} Hz — {m['cpu']}, "
                 f"{m['cores_usable']} core(s)", fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(report: BenchReport, out_dir: Path) -> list[Path]:
    """Write bench.csv, bench.json and bench.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = csv_rows(report)
    csv_path = out_dir / "bench.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["block"])
        writer.writeheader()
        writer.writerows(rows)
    json_path = out_dir / "bench.json"
    json_path.write_text(report.to_json())
    png_path = out_dir / "bench.png"
    plot(report, png_path)
    return [csv_path, json_path, png_path]
