"""``streamer replay INPUT``: a recorded file through the pipeline, to a WAV file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from streamer.cli._runner import build, drive, summary_lines
from streamer.config import FileSourceConfig, load_stream, with_overrides


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "replay",
        help="process a recorded file",
        description="Replay a recorded file (WAV/FLAC/OGG, or .npy/.csv with a rate in the "
        "config) through the pipeline, as fast as possible unless --realtime, and write the "
        "processed audio as a float32 WAV of the same duration, at the rate the stages "
        "output (the input's unless a resample stage changes it).",
    )
    parser.add_argument("input", type=Path, help="the recording")
    parser.add_argument("--config", type=Path, help="TOML config (default: the embedded one)")
    parser.add_argument("--output", type=Path, help="processed audio, 32-bit float WAV")
    parser.add_argument(
        "--events", type=Path, help="anomaly events, one JSON object per line (JSONL)"
    )
    parser.add_argument(
        "--event-audio",
        action="store_true",
        help="with --events: also save each event's audio (with pre-roll) as a WAV beside it",
    )
    parser.add_argument("--block", type=_positive_int, help="frames per block")
    parser.add_argument(
        "--stream", metavar="NAME", help="which of the config's [streams.NAME] to replay through"
    )
    parser.add_argument("--realtime", action="store_true", help="pace blocks at real time")
    parser.add_argument("--rate", type=_positive_int, help="sample rate of a .npy/.csv input, Hz")
    parser.set_defaults(handler=handle)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def handle(args: argparse.Namespace) -> int:
    cfg = load_stream(args.config, args.stream)
    # A file source in the config keeps its settings (a rate for .npy/.csv); any other is replaced.
    source: dict[str, Any] = {
        "kind": "file", "path": args.input.absolute(), "realtime": args.realtime
    }  # fmt: skip
    if args.rate is not None:
        source["rate"] = args.rate
    keep_source = isinstance(cfg.source, FileSourceConfig)
    updates: dict[str, Any] = {"source": source} if keep_source else {}
    if args.block is not None:
        updates["pipeline"] = {"block": args.block}
    paths = {"wav": args.output, "events": args.events}
    output: dict[str, Any] = {k: v.absolute() for k, v in paths.items() if v is not None}
    if args.event_audio:
        output["event_audio"] = True
    if output:
        updates["output"] = output
    cfg = with_overrides(cfg, updates, replace=None if keep_source else {"source": source})
    pipeline = build(cfg, args.config, publish=cfg.publish.enabled is True)
    started = time.monotonic()
    drive([pipeline], progress=True)
    lines = summary_lines(pipeline, time.monotonic() - started)
    for path in (cfg.output.wav, cfg.output.events):
        if path is not None:
            lines.append(f"wrote {path}")
    print(
        "\n".join(f"{args.input.name}: {line}" if i == 0 else line for i, line in enumerate(lines)),
        file=sys.stderr,
    )
    return 0
