"""How many sensor streams one daemon carries: N live streams in one `streamer run`, measured.

Writes a config of ``--streams`` named streams (``s00``, ``s01``, ...), each a
seeded recording of a machine at ``--rate`` (``tools/anomaly_scenarios.py``:
hum, harmonics, a ringing resonance, a noise floor; 30 s, looped) replayed at
real-time pace as a sensor would deliver it (``--source synth`` for the synth
scene instead), through the anomaly stage with its defaults (``--stages`` for
another chain), all publishing on one socket; runs the daemon for
``--seconds``; and, from a subscriber in this process, records for every
stream its last ``status/`` heartbeat and the
end-to-end latency of each ``audio/`` message when held here. Prints a table
per stream and a total line (blocks, drops, deadline misses, processing and
end-to-end percentiles, the daemon's CPU use), and writes them as JSON.

    python tools/many_streams.py --streams 16 --rate 25600 --seconds 60 --json streams.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import zmq
from anomaly_scenarios import Machine, render

from streamer.wire import decode


def write_config(path: Path, args: argparse.Namespace) -> None:
    """The daemon's config, and for file sources their recordings, beside ``path``."""
    lines = [f'[publish]\nendpoint = "{args.endpoint}"\n']
    for i in range(args.streams):
        name = f"s{i:02d}"
        if args.source == "file":
            rng = np.random.default_rng([7, i])
            x = render(Machine.draw(rng, args.rate), rng, args.rate, 30 * args.rate, drift=False)
            sf.write(path.parent / f"{name}.wav", x.astype(np.float32), args.rate, "FLOAT")
            source = f'kind = "file"\npath = "{name}.wav"\nrealtime = true\nloop = true'
        else:
            source = f'kind = "synth"\nrate = {args.rate}\nseed = {i}'
        lines.append(
            f"[streams.{name}]\nstages = {args.stages}\n[streams.{name}.source]\n{source}\n"
            f"[streams.{name}.pipeline]\nblock = {args.block}\nstatus_interval_s = 30.0\n"
        )
    path.write_text("\n".join(lines))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rate", type=int, default=25_600)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not counted")
    parser.add_argument("--stages", default='[{kind = "anomaly"}]', help="TOML list of stages")
    parser.add_argument("--source", choices=("file", "synth"), default="file")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5598")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "streams.toml"
        write_config(cfg, args)
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        for prefix in ("status/", "audio/"):
            sock.setsockopt_string(zmq.SUBSCRIBE, prefix)
        sock.connect(args.endpoint)
        log = (Path(tmp) / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        status: dict[str, dict[str, Any]] = {}
        held_ms: dict[str, list[float]] = {}
        last_seq: dict[str, int] = {}
        gaps: dict[str, int] = {}
        start = time.monotonic()
        cpu_start: float | None = None
        try:
            while time.monotonic() - start < args.seconds:
                if daemon.poll() is not None:
                    print(f"daemon exited with {daemon.returncode}", file=sys.stderr)
                    return 1
                if not sock.poll(200):
                    continue
                frames = sock.recv_multipart()
                now_ns = time.monotonic_ns()
                msg = decode(frames)
                stream = msg.header["stream"]
                if msg.kind == "status":
                    status[stream] = msg.header
                    continue
                if time.monotonic() - start < args.warmup:
                    continue
                if cpu_start is None:
                    cpu_start, cpu_t0 = cpu_seconds(daemon.pid), time.monotonic()
                seq = msg.header["seq"]
                if stream in last_seq and seq != last_seq[stream] + 1:
                    gaps[stream] = gaps.get(stream, 0) + 1
                last_seq[stream] = seq
                held_ms.setdefault(stream, []).append((now_ns - msg.header["captured_ns"]) / 1e6)
            cpu_used = cpu_seconds(daemon.pid) - (cpu_start or 0.0)
            cpu_wall = time.monotonic() - cpu_t0 if cpu_start is not None else float("nan")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
            log.close()
            sock.close()

    rows = []
    for name in sorted(status):
        st = status[name]
        rows.append({
            "stream": name,
            "blocks": st["blocks"],
            "dropped_blocks": st["dropped_blocks"],
            "deadline_misses": st["deadline_misses"],
            "processing_ms": st["processing_ms"],
            "end_to_end_ms": st["end_to_end_ms"],
            "held_by_subscriber_ms": percentiles(held_ms.get(name, [])),
            "subscriber_gaps": gaps.get(name, 0),
        })  # fmt: skip
    print(
        f"{'stream':>6} {'blocks':>7} {'drops':>5} {'misses':>6} {'proc p50':>8} {'p99':>6} "
        f"{'max':>6} {'e2e p50':>7} {'p99':>6} {'held p50':>8} {'p99':>6} {'gaps':>4}"
    )
    for r in rows:
        p, e, h = r["processing_ms"], r["end_to_end_ms"], r["held_by_subscriber_ms"]
        print(
            f"{r['stream']:>6} {r['blocks']:>7} {r['dropped_blocks']:>5} {r['deadline_misses']:>6} "
            f"{p['p50']:>8} {p['p99']:>6} {p['max']:>6} {e['p50']:>7} {e['p99']:>6} "
            f"{h['p50']:>8} {h['p99']:>6} {r['subscriber_gaps']:>4}"
        )
    period_ms = 1000 * args.block / args.rate
    cores = cpu_used / cpu_wall
    print(
        f"{len(rows)} streams at {args.rate} Hz, block {args.block} ({period_ms:.2f} ms), "
        f"{args.source} sources, stages {args.stages}, {args.seconds:.0f} s: "
        f"daemon CPU {cores:.2f} cores "
        f"({100 * cores / len(rows):.1f} % of a core per stream); daemon exit {daemon.returncode}"
    )
    if args.json:
        summary = {"streams": args.streams, "rate": args.rate, "block": args.block,
                   "seconds": args.seconds, "cpu_cores": round(cores, 3), "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(summary, indent=1))
    ok = daemon.returncode == 0 and len(rows) == args.streams
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
