"""Memory a stage allocates per block, measured with tracemalloc (hot paths allocate once)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

from streamer.block import Block
from streamer.stages.base import Stage


def peak_extra_bytes(stage: Stage, blocks: Sequence[Block], warmup: int = 10) -> list[int]:
    """For each block after ``warmup`` (which fill plan caches), the peak memory its
    ``process`` call allocated beyond the output samples it returned."""
    for block in blocks[:warmup]:
        stage.process(block)
    extra: list[int] = []
    tracemalloc.start()
    try:
        for block in blocks[warmup:]:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            out = stage.process(block)
            extra.append(tracemalloc.get_traced_memory()[1] - before - out.samples.nbytes)
            del out
    finally:
        tracemalloc.stop()
    return extra
