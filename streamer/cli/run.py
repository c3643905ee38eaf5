"""``streamer run [CONFIG]``: the daemon; runs until SIGINT/SIGTERM or the end of its input."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from streamer.cli._runner import build, drive, summary_lines
from streamer.config import load_config
from streamer.errors import StreamerError
from streamer.pipeline import Pipeline
from streamer.prometheus import serve as serve_prometheus
from streamer.stages import build_stages

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
    layout, out = pipeline.source.layout, pipeline.out_layout
    rates = f"{layout.rate} Hz" + (f" (out {out.rate} Hz)" if out.rate != layout.rate else "")
    log.info(
        "[%s] %s source, %s, %d ch, block %d, stages: %s; algorithmic latency %.2f ms",
        cfg.stream,
        cfg.source.kind,
        rates,
        layout.channels,
        cfg.pipeline.block,
        ", ".join(stage.name for stage in pipeline.stages) or "none",
        pipeline.algorithmic_latency_s * 1e3,
    )
    if pipeline.publisher is not None:
        log.info("[%s] publishing on %s", cfg.stream, pipeline.publisher.endpoint)
    if cfg.prometheus.enabled:
        try:
            host, port = serve_prometheus(cfg.prometheus, pipeline)
        except StreamerError:
            pipeline.close()
            raise
        log.info("[%s] Prometheus metrics on http://%s:%d/metrics", cfg.stream, host, port)
    started = time.monotonic()
    reload = None if args.config is None else lambda: reload_config(pipeline, args.config)
    drive(pipeline, progress=False, reload=reload)
    for line in summary_lines(pipeline, time.monotonic() - started):
        log.info("[%s] %s", cfg.stream, line)
    return 0


def reload_config(pipeline: Pipeline, path: Path) -> None:
    """SIGHUP: rebuild the stages from the config file between two blocks.

    A config that is refused (bad TOML, a bad value, a filter the stream's rate
    cannot have) leaves the running chain as it was, with the reason logged.
    Other sections are compared and, where they changed, said to wait for a
    restart: a source or socket cannot be swapped without interrupting the stream.
    """
    name = pipeline.cfg.stream
    try:
        new = load_config(path)
        stages = build_stages(new.stages, pipeline.source.layout, block=pipeline.cfg.pipeline.block)
        pipeline.replace_stages(stages)  # refused if the output rate would change
    except StreamerError as exc:
        log.error("[%s] reload refused, keeping the running config: %s", name, exc)
        return
    old = pipeline.cfg
    for section in ("stream", "source", "pipeline", "publish", "output"):
        if getattr(new, section) != getattr(old, section):
            log.warning("[%s] reload: [%s] changed; it applies at the next restart", name, section)
    pipeline.cfg = old.model_copy(update={"stages": new.stages})
    log.info(
        "[%s] reloaded %s: stages %s",
        name,
        path,
        ", ".join(stage.name for stage in stages) or "none",
    )
