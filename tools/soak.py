"""Run the daemon for a while and watch it: memory, drops, overflows, latency, from outside.

Starts ``streamer run CONFIG`` as a subprocess, subscribes to its ``status/``
heartbeat, samples the daemon's resident memory every ``--every`` seconds, and
at the end prints a table and a verdict (memory growth after warm-up, drops,
overflows, device losses) and writes the samples as CSV.

    python tools/soak.py config/mic.toml --minutes 10 --csv soak.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from streamer.wire import decode


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5599")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--log", type=Path, default=Path("soak-daemon.log"), help="daemon's log")
    args = parser.parse_args()

    env = {**os.environ, "STREAMER__PUBLISH__ENDPOINT": args.endpoint}
    # The log goes to a file: a pipe nobody reads would fill and block the daemon's logging.
    log_file = args.log.open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", str(args.config)],
        env=env, stdout=subprocess.DEVNULL, stderr=log_file,
    )  # fmt: skip
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, "status/")
    sock.connect(args.endpoint)
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    next_sample = start
    status: dict[str, Any] = {}
    try:
        while time.monotonic() - start < args.minutes * 60:
            if daemon.poll() is not None:
                print(f"daemon exited with {daemon.returncode}", file=sys.stderr)
                return 1
            if sock.poll(200):
                status = decode(sock.recv_multipart()).header
            if time.monotonic() >= next_sample and status:
                next_sample += args.every
                source = status.get("source") or {}
                proc_ms, e2e_ms = status["processing_ms"], status["end_to_end_ms"]
                samples.append({
                    "t_s": round(time.monotonic() - start, 1),
                    "rss_kib": rss_kib(daemon.pid),
                    "blocks": status["blocks"],
                    "dropped_blocks": status["dropped_blocks"],
                    "deadline_misses": status["deadline_misses"],
                    "input_overflows": source.get("input_overflows", 0),
                    "device_losses": source.get("device_losses", 0),
                    "processing_p99_ms": proc_ms["p99"],
                    "end_to_end_p99_ms": e2e_ms["p99"],
                })  # fmt: skip
                print(json.dumps(samples[-1]), flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log_file.close()
        sock.close()
    if args.csv and samples:
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(samples[0]))
            writer.writeheader()
            writer.writerows(samples)
    after = [s for s in samples if s["t_s"] >= args.warmup] or samples
    base, last = after[0], samples[-1]
    growth = (last["rss_kib"] - base["rss_kib"]) / base["rss_kib"]
    print(
        f"{last['t_s']:.0f} s, {last['blocks']} blocks; RSS {base['rss_kib']} KiB at "
        f"{base['t_s']:.0f} s -> {last['rss_kib']} KiB ({100 * growth:+.2f} %); "
        f"dropped {last['dropped_blocks']}, deadline misses {last['deadline_misses']}, "
        f"input overflows {last['input_overflows']}, device losses {last['device_losses']}; "
        f"daemon exit {daemon.returncode}"
    )
    return 0 if daemon.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
