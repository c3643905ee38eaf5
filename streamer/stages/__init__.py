"""Processing stages, built from their configs by kind, and the layouts along a chain."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from itertools import zip_longest

from streamer.block import StreamLayout
from streamer.config import StageConfig
from streamer.stages.anomaly import AnomalyStage
from streamer.stages.base import Stage
from streamer.stages.denoise import DenoiseStage
from streamer.stages.fir import FirStage
from streamer.stages.resample import ResampleStage

__all__ = [
    "STAGE_KINDS",
    "AnomalyStage",
    "DenoiseStage",
    "FirStage",
    "ResampleStage",
    "Stage",
    "build_stages",
    "chain_latency_s",
    "chain_layouts",
    "link_tensor_hand_offs",
    "output_layout",
]

StageFactory = Callable[..., Stage]
STAGE_KINDS: dict[str, StageFactory] = {
    "fir": FirStage,
    "anomaly": AnomalyStage,
    "denoise": DenoiseStage,
    "resample": ResampleStage,
}


def output_layout(stage: Stage, layout: StreamLayout) -> StreamLayout:
    """What ``stage`` outputs when fed ``layout``: its ``out_layout`` if it has one (a stage
    that changes the rate or channels), else ``layout`` unchanged."""
    out: StreamLayout | None = getattr(stage, "out_layout", None)
    return layout if out is None else out


def chain_layouts(stages: Sequence[Stage], layout: StreamLayout) -> list[StreamLayout]:
    """The layout into each stage, then out of the last: ``len(stages) + 1`` layouts,
    the first ``layout`` (the source's), the last what the sinks receive."""
    layouts = [layout]
    for stage in stages:
        layouts.append(output_layout(stage, layouts[-1]))
    return layouts


def chain_latency_s(stages: Sequence[Stage], layout: StreamLayout) -> Fraction:
    """The stages' declared latencies added up, seconds (exact): each stage's latency is in
    samples at its own input rate, which a stage before it may have changed."""
    inputs = chain_layouts(stages, layout)[:-1]
    return sum(
        (Fraction(stage.latency, into.rate) for stage, into in zip(stages, inputs, strict=True)),
        Fraction(0),
    )


def build_stages(
    configs: Sequence[StageConfig], layout: StreamLayout, *, block: int
) -> list[Stage]:
    """Build the ordered stage chain for one stream; names are made unique (``fir``, ``fir.1``).

    Each stage is built for the layout the stage before it outputs (``layout``, the
    source's, for the first), so a stage after a resample works at the new rate;
    ``block`` (frames at the source rate) is scaled to each stage's input rate as its
    ``block_hint``.
    """
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    current = layout
    for index, cfg in enumerate(configs):
        hint = max(1, -(-block * current.rate // layout.rate))
        stage = STAGE_KINDS[cfg.kind](cfg, current, index=index, block_hint=hint)
        count = seen.get(stage.name, 0)
        seen[stage.name] = count + 1
        if count:
            stage.name = f"{stage.name}.{count}"
        stages.append(stage)
        current = output_layout(stage, current)
    link_tensor_hand_offs(stages)
    return stages


def link_tensor_hand_offs(stages: Sequence[Stage]) -> None:
    """Let each stage on a torch device hand the next one a tensor when that one computes
    on the same device (`Stage`): a chain of GPU stages then copies to the GPU once, at
    its start, and back once, at its end, instead of at every stage. A stage before a
    numpy stage, and the last, return numpy."""
    for stage, successor in zip_longest(stages, stages[1:]):  # the last one's is None
        device = getattr(stage, "tensor_device", None)
        if device is not None:
            next_device = getattr(successor, "tensor_device", None)
            stage.hands_off_tensors = device == next_device  # type: ignore[union-attr]
