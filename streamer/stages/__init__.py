"""Processing stages, built from their configs by kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamer.block import StreamLayout
from streamer.config import StageConfig
from streamer.stages.anomaly import AnomalyStage
from streamer.stages.base import Stage
from streamer.stages.fir import FirStage

__all__ = ["STAGE_KINDS", "AnomalyStage", "FirStage", "Stage", "build_stages"]

StageFactory = Callable[..., Stage]
STAGE_KINDS: dict[str, StageFactory] = {"fir": FirStage, "anomaly": AnomalyStage}


def build_stages(
    configs: Sequence[StageConfig], layout: StreamLayout, *, block: int
) -> list[Stage]:
    """Build the ordered stage chain for one stream; names are made unique (``fir``, ``fir.1``)."""
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    for index, cfg in enumerate(configs):
        stage = STAGE_KINDS[cfg.kind](cfg, layout, index=index, block_hint=block)
        count = seen.get(stage.name, 0)
        seen[stage.name] = count + 1
        if count:
            stage.name = f"{stage.name}.{count}"
        stages.append(stage)
    return stages
