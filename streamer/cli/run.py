"""``streamer run [CONFIG]``: the daemon; runs until SIGINT/SIGTERM or the end of its input."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from streamer.cli._runner import build, drive, summary_lines
from streamer.config import load_config

log = logging.getLogger("streamer")


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "run",
        help="run the pipeline as a daemon",
        description="Run the pipeline until SIGINT/SIGTERM (or the end of a non-looping file). "
        "Without CONFIG, runs the embedded default: the synth source through every stage, "
        "published on tcp://127.0.0.1:5555.",
    )
    parser.add_argument("config", nargs="?", type=Path, help="TOML config file")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    publish = cfg.publish.enabled is not False
    pipeline = build(cfg, args.config, publish=publish)
    layout = pipeline.source.layout
    log.info(
        "[%s] %s source, %d Hz, %d ch, block %d, stages: %s; algorithmic latency %.2f ms",
        cfg.stream,
        cfg.source.kind,
        layout.rate,
        layout.channels,
        cfg.pipeline.block,
        ", ".join(stage.name for stage in pipeline.stages) or "none",
        pipeline.algorithmic_latency / layout.rate * 1e3,
    )
    if pipeline.publisher is not None:
        log.info("[%s] publishing on %s", cfg.stream, pipeline.publisher.endpoint)
    started = time.monotonic()
    drive(pipeline, progress=False)
    for line in summary_lines(pipeline, time.monotonic() - started):
        log.info("[%s] %s", cfg.stream, line)
    return 0
