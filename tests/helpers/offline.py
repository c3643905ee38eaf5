"""Offline twins of what a running daemon publishes, for comparing sample by sample."""

from __future__ import annotations

import threading

import numpy as np

from streamer.block import Block
from streamer.config import load_config, with_overrides
from streamer.sources import open_source
from streamer.stages import build_stages


def offline_default_output(seconds: float) -> np.ndarray:
    """The embedded default pipeline run on the whole synth signal at once (its anomaly
    stage hands the audio on untouched)."""
    cfg = with_overrides(
        load_config(None, environ={}),
        {"source": {"realtime": False, "duration_s": seconds}},
    )
    source = open_source(cfg.source, cfg.stream)
    whole = np.concatenate([b.samples for b in source.blocks(1 << 16, threading.Event())], axis=1)
    block = Block(whole, "main", 0, 0, source.layout.rate, 0)
    for stage in build_stages(cfg.stages, source.layout, block=whole.shape[1]):
        block = stage.process(block)
    return block.samples
