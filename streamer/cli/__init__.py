"""The ``streamer`` command line: one subcommand per module, exit codes per DESIGN.md §3.

Exit status: 0 on success, 2 for bad usage, a bad config or input file (one
line naming the file and the problem), 1 for a failure while running. A
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from streamer import __version__
from streamer.cli import bench, devices, keys, replay, run, subscribe
from streamer.errors import StreamerError
from streamer.logs import configure_logging

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Real-time block-streaming signal processing, published over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, replay, subscribe, bench, devices, keys):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        status: int = args.handler(args)
        return status
    except StreamerError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"streamer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"streamer: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
