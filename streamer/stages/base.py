"""The protocol every processing stage follows."""

from __future__ import annotations

from typing import Protocol

from streamer.block import Block

__all__ = ["Stage"]


class Stage(Protocol):
    """A stateful block transformer, built for one stream layout.

    ``__init__(cfg, layout)`` checks its config against the layout, computes
    derived constants and allocates all state; ``process`` then transforms one
    block at a time. Whatever the block sizes, the concatenated outputs equal
    the output of the whole signal processed at once (to float32 rounding).

    A stage that changes the layout (a resample: another rate) also has an
    ``out_layout: StreamLayout`` attribute, the layout of the blocks it returns;
    the next stage and the sinks are built for that (`streamer.stages.chain_layouts`).
    A stage without one returns blocks of the layout it was built for.

    A stage that computes on a torch device has a ``tensor_device: torch.device``
    attribute and a ``hands_off_tensors: bool`` one, False when built. It takes blocks
    whose samples are a torch tensor on that device as well as numpy ones; with
    ``hands_off_tensors`` set it returns its samples as a float32 tensor there instead
    of numpy, so that nothing crosses the bus between it and the next stage.
    `streamer.stages.link_tensor_hand_offs` sets it where the next stage computes on
    the same device; the last stage of a chain always returns numpy (the sinks' input).
    """

    name: str
    latency: int
    """Algorithmic latency, samples at the stage's input rate: how far output lags input by
    construction."""

    def process(self, block: Block) -> Block:
        """Transform one block (any number of frames, 0 included)."""
        ...

    def reset(self) -> None:
        """Return to the just-built state (history cleared)."""
        ...
