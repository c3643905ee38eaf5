"""``streamer subscribe``: print what a running service publishes, one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamer.config import PublishConfig
from streamer.errors import ConfigError, WireFormatError
from streamer.security import secure_client
from streamer.wire import Message, decode

DEFAULT_ENDPOINT = PublishConfig().endpoint


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "subscribe",
        help="print published messages as JSON lines",
        description="Connect to a running service and print each message as one JSON object "
        "per line: topic, header, a summary of any array, and the end-to-end latency "
        "(valid on the same host: both sides use the monotonic clock).",
    )
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="where the service publishes")
    parser.add_argument("--topic", default="", help="topic prefix, e.g. 'anomaly/' (default: all)")
    parser.add_argument("--count", type=int, help="exit after this many messages")
    parser.add_argument(
        "--timeout", type=float, help="exit with status 1 after this many seconds without a message"
    )
    parser.add_argument("--server-key", type=Path, help="the publisher's public key file (CURVE)")
    parser.add_argument("--client-key", type=Path, help="this subscriber's secret key file (CURVE)")
    parser.set_defaults(handler=handle)


def describe(message: Message, received_ns: int) -> dict[str, Any]:
    """The printed form of a message: arrays summarised, not dumped."""
    out: dict[str, Any] = {"topic": message.topic, "header": message.header}
    if message.array is not None:
        arr = message.array
        out["array"] = {
            "dtype": str(arr.dtype.str),
            "shape": list(arr.shape),
            "min": float(arr.min()) if arr.size else None,
            "max": float(arr.max()) if arr.size else None,
            "rms": float(np.sqrt(np.mean(np.square(arr, dtype=np.float64)))) if arr.size else None,
        }
    out["end_to_end_ms"] = round((received_ns - int(message.header["captured_ns"])) / 1e6, 3)
    return out


def handle(args: argparse.Namespace) -> int:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 256 << 20)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    if (args.server_key is None) != (args.client_key is None):
        sock.close()
        raise ConfigError("--server-key and --client-key go together")
    if args.server_key is not None:
        secure_client(sock, args.server_key, args.client_key, key="subscribe")
    sock.connect(args.endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    received = 0
    timeout_ms = None if args.timeout is None else int(args.timeout * 1000)
    try:
        while args.count is None or received < args.count:
            if not poller.poll(timeout_ms):
                print(
                    f"streamer: no message from {args.endpoint} in {args.timeout} s",
                    file=sys.stderr,
                )
                return 1
            frames = sock.recv_multipart()
            now = time.monotonic_ns()
            try:
                message = decode(frames)
            except WireFormatError as exc:
                print(f"streamer: refused a message: {exc}", file=sys.stderr)
                continue
            received += 1
            sys.stdout.write(json.dumps(describe(message, now)) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error
    finally:
        sock.close()
    return 0
