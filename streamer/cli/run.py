"""``streamer run [CONFIG]``: the daemon; runs until SIGINT/SIGTERM or the end of its input."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from streamer.cli._runner import build, drive, summary_lines
from streamer.config import Config, load_config
from streamer.errors import ConfigError, StreamerError
from streamer.pipeline import Pipeline, SharedProcessor
from streamer.prometheus import serve as serve_prometheus
from streamer.sinks.publisher import PublishHub
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
    hub: PublishHub | None = None
    # Several streams share one socket, bound here, and one processing thread.
    processor = SharedProcessor() if cfg.streams is not None else None
    pipelines: list[Pipeline] = []
    try:
        if publish and cfg.streams is not None:
            hub = PublishHub(cfg.publish)
            hub.attach()  # held until every stream is done with it
        for stream_cfg in cfg.stream_configs():
            pipeline = build(
                stream_cfg, args.config, publish=publish, hub=hub, processor=processor
            )
            pipelines.append(pipeline)
        for pipeline in pipelines:
            _log_start(pipeline)
        if cfg.prometheus.enabled:
            host, port = serve_prometheus(cfg.prometheus, pipelines)
            log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    except StreamerError as exc:
        for pipeline in pipelines:
            pipeline.close()
        if hub is not None:
            hub.detach()
        if isinstance(exc, ConfigError) and exc.path is None:
            exc.path = args.config or Path("<default config>")
        raise
    started = time.monotonic()
    reload = None if args.config is None else lambda: reload_config(pipelines, args.config)
    try:
        drive(pipelines, progress=False, reload=reload)
    finally:
        if hub is not None:
            hub.detach()
        wall_s = time.monotonic() - started
        for pipeline in pipelines:
            for line in summary_lines(pipeline, wall_s):
                log.info("[%s] %s", pipeline.cfg.stream, line)
    return 0


def _log_start(pipeline: Pipeline) -> None:
    cfg = pipeline.cfg
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


def reload_config(pipelines: list[Pipeline], path: Path) -> None:
    """SIGHUP: rebuild every stream's stages from the config file between two blocks.

    A config that is refused (bad TOML, a bad value, a filter the stream's rate
    cannot have) leaves the running chains as they were, with the reason logged.
    Other sections are compared and, where they changed, said to wait for a
    restart: a source or socket cannot be swapped without interrupting the stream,
    nor a stream added or removed.
    """
    try:
        new_cfgs = {c.stream: c for c in load_config(path).stream_configs()}
    except StreamerError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return
    running = {p.cfg.stream for p in pipelines}
    if set(new_cfgs) != running:
        log.warning("reload: the streams changed; that applies at the next restart")
    for pipeline in pipelines:
        new = new_cfgs.get(pipeline.cfg.stream)
        if new is not None:
            _reload_stream(pipeline, new, path)


def _reload_stream(pipeline: Pipeline, new: Config, path: Path) -> None:
    name = pipeline.cfg.stream
    try:
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
