"""Publish a sensor signal into streamer over ZeroMQ at real-time pace: a template for bridges.

Written with pyzmq and numpy only (no streamer import), so that it shows the
whole wire format (docs/wire-format.md) in one page: a PUB socket sends
``[b"audio/STREAM", JSON header, float32 payload]`` per block. Point a
streamer config at it with ``[source] kind = "zmq"`` and the same endpoint.

The default signal is a made-up pump: shaft harmonics, and a bearing with an
outer-race fault ringing a structural resonance at the fault frequency, on
three accelerometer axes with noise. ``--file`` sends a .npy (frames x
channels) or a .csv (a column per channel) instead.

    python tools/publish_sensor.py --endpoint tcp://127.0.0.1:5556 --rate 10000 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import zmq

FORMAT_VERSION = 1


def pump_vibration(
    rate: int, channels: int, block: int, seed: int
) -> Iterator[npt.NDArray[np.float32]]:
    """Endless (channels, block) float32 blocks of a pump with a bearing fault."""
    rng = np.random.default_rng(seed)
    shaft_hz, fault_hz, resonance_hz = 24.5, 24.5 * 4.37, min(3000.0, 0.3 * rate)
    gains = 1.0 / (1.0 + np.arange(channels))[:, None]  # axes see it differently
    n0 = 0
    while True:
        t = (n0 + np.arange(block)) / rate
        shaft = sum(0.3 / k * np.sin(2 * np.pi * k * shaft_hz * t + k) for k in (1, 2, 3))
        phase = (t * fault_hz) % 1.0  # time since the last impact, in fault periods
        ring = np.exp(-phase / fault_hz * 800.0) * np.sin(
            2 * np.pi * resonance_hz * phase / fault_hz
        )
        noise = 0.05 * rng.standard_normal((channels, block))
        yield (gains * (shaft + 0.5 * ring) + noise).astype(np.float32)
        n0 += block


def file_blocks(path: Path, block: int, loop: bool) -> Iterator[npt.NDArray[np.float32]]:
    """(channels, block) blocks of a .npy (frames x channels) or .csv (a column per channel)."""
    if path.suffix == ".npy":
        data = np.load(path, allow_pickle=False)
    else:
        data = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=_header_lines(path))
    data = np.atleast_2d(data.T if data.ndim == 2 else data).astype(np.float32)
    while True:
        for start in range(0, data.shape[1], block):
            yield np.ascontiguousarray(data[:, start : start + block])
        if not loop:
            return


def _header_lines(path: Path) -> int:
    with path.open() as fh:
        first = fh.readline()
    try:
        [float(x) for x in first.split(",")]
    except ValueError:
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="where to bind")
    parser.add_argument("--stream", default="sensor", help="stream name in the topic")
    parser.add_argument("--rate", type=int, default=10_000, help="sample rate, Hz")
    parser.add_argument("--channels", type=int, default=3, help="axes (generated signal)")
    parser.add_argument("--block", type=int, default=500, help="frames per message")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: never)")
    parser.add_argument("--file", type=Path, help=".npy or .csv to send instead")
    parser.add_argument("--loop", action="store_true", help="repeat --file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sock = zmq.Context().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.bind(args.endpoint)
    topic = f"audio/{args.stream}".encode("ascii")
    blocks = (
        file_blocks(args.file, args.block, args.loop)
        if args.file
        else pump_vibration(args.rate, args.channels, args.block, args.seed)
    )
    start_ns = time.monotonic_ns()
    t0 = 0
    for seq, samples in enumerate(blocks):
        frames = samples.shape[1]
        # Real-time pace: block k goes out when its last sample would have been measured.
        due_ns = start_ns + (t0 + frames) * 1_000_000_000 // args.rate
        delay = (due_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic_ns()
        header = {
            "v": FORMAT_VERSION,
            "stream": args.stream,
            "seq": seq,
            "t0": t0,
            "rate": args.rate,
            "captured_ns": now,
            "published_ns": now,
            "dtype": "<f4",
            "shape": list(samples.shape),
        }
        payload = samples.astype("<f4", copy=False).tobytes()
        sock.send_multipart([topic, json.dumps(header).encode(), payload])
        t0 += frames
        if args.seconds is not None and t0 >= args.seconds * args.rate:
            break
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
