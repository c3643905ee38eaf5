"""Offline twins of what a running daemon publishes, for comparing sample by sample."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from streamer.block import Block
from streamer.cli import main
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


def replay_wav(tmp_path: Path, x: np.ndarray, rate: int, config: Path) -> tuple[np.ndarray, int]:
    """``streamer replay`` of ``x`` written as a float WAV, through ``config``: (output, rate)."""
    sf.write(tmp_path / "in.wav", x, rate, subtype="FLOAT")
    out = tmp_path / "out.wav"
    argv = ["replay", str(tmp_path / "in.wav"), "--config", str(config), "--output", str(out)]
    assert main(argv) == 0
    y, out_rate = sf.read(out, dtype="float64")
    return y, int(out_rate)
