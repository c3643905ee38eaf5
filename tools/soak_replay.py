"""An accelerated soak: hours of 48 kHz audio through the full pipeline as fast as it goes.

Runs the configured pipeline (the embedded default without --config) on its
synth source, flat out and lossless, with the publisher on (a subscriber-less
PUB socket still encodes and sends every message), and samples along the way:
resident memory and the median/p99 processing time of the blocks in each
window. At the end it judges memory growth after warm-up (limit 5 %) and drift
of the per-block time (last windows against the first after warm-up).

    python tools/soak_replay.py --hours 1 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamer.block import Block
from streamer.config import load_config, with_overrides
from streamer.metrics import BlockTiming
from streamer.pipeline import build_pipeline


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class WindowRecorder:
    """A sink keeping each window's per-block processing times (preallocated, reused)."""

    name = "soak"

    def __init__(self) -> None:
        self._times = np.zeros(1 << 20, dtype=np.int64)
        self._n = 0
        self._lock = threading.Lock()

    def consume(self, block: Block, timing: BlockTiming) -> None:
        with self._lock:
            if self._n < self._times.size:
                self._times[self._n] = timing.processing_ns
                self._n += 1

    def take(self) -> np.ndarray:
        with self._lock:
            out, self._n = self._times[: self._n].copy(), 0
        return out

    def close(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--hours", type=float, default=1.0, help="hours of audio to process")
    parser.add_argument("--window", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the run as warm-up")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:0")
    parser.add_argument(
        "--max-drift", type=float, default=1.25, help="allowed late/early per-block time ratio"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cfg = with_overrides(
        load_config(args.config),
        {"source": {"realtime": False, "duration_s": args.hours * 3600},
         "publish": {"endpoint": args.endpoint}},
    )  # fmt: skip
    pipeline = build_pipeline(cfg, publish=True)
    recorder = WindowRecorder()
    pipeline.sinks.insert(0, recorder)
    rate = pipeline.source.layout.rate
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    pipeline.start()
    while not pipeline.wait(args.window):
        times = recorder.take()
        if times.size:
            samples.append({
                "wall_s": round(time.monotonic() - start, 1),
                "audio_s": round(pipeline.metrics.frames / rate, 1),
                "rss_kib": rss_kib(),
                "blocks": int(times.size),
                "p50_us": round(float(np.median(times)) / 1e3, 2),
                "p99_us": round(float(np.percentile(times, 99)) / 1e3, 2),
            })  # fmt: skip
            print(json.dumps(samples[-1]), flush=True)
    pipeline.close()
    if pipeline.error is not None:
        raise pipeline.error
    wall = time.monotonic() - start
    after = samples[max(1, int(len(samples) * args.warmup)) :] or samples
    third = max(1, len(after) // 3)
    first_p50 = float(np.median([s["p50_us"] for s in after[:third]]))
    last_p50 = float(np.median([s["p50_us"] for s in after[-third:]]))
    growth = (after[-1]["rss_kib"] - after[0]["rss_kib"]) / after[0]["rss_kib"]
    verdict = {
        "audio_hours": args.hours,
        "wall_s": round(wall, 1),
        "speed_x_realtime": round(args.hours * 3600 / wall, 1),
        "blocks": pipeline.metrics.blocks,
        "rss_start_kib": after[0]["rss_kib"],
        "rss_end_kib": after[-1]["rss_kib"],
        "rss_growth": round(growth, 4),
        "p50_us_first_third": first_p50,
        "p50_us_last_third": last_p50,
        "drift": round(last_p50 / first_p50, 3),
        "dropped_blocks": pipeline.metrics.dropped_blocks,
        "sink_drops": pipeline.metrics.sink_drops,
        "memory_flat": growth < 0.05,
        "time_flat": last_p50 / first_p50 < args.max_drift,
        "windows": samples,
    }
    print(json.dumps({k: v for k, v in verdict.items() if k != "windows"}))
    if args.json:
        args.json.write_text(json.dumps(verdict, indent=2))
    return 0 if verdict["memory_flat"] and verdict["time_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
