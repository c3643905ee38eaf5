"""The unit of data that flows through a pipeline: one chunk of one stream."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamer.errors import BlockLayoutError

__all__ = ["Annotation", "Block", "StreamLayout", "whole_blocks"]


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """What every block of one stream shares: channel count and sample rate (Hz)."""

    channels: int
    rate: int

    def check(self, block: Block, kind: str, name: str) -> None:
        """Raise `BlockLayoutError` if ``block`` does not fit this layout; the message
        names the ``kind`` stage ``name`` (formatted only then: this runs every block)."""
        n_ch = block.samples.shape[0]
        if n_ch != self.channels:
            raise BlockLayoutError(
                f"block has {n_ch} channels, {kind} stage {name!r} was built for {self.channels}"
            )
        if block.rate != self.rate:
            raise BlockLayoutError(
                f"block rate is {block.rate} Hz, {kind} stage {name!r} was built for "
                f"{self.rate} Hz"
            )


@dataclass(frozen=True, slots=True)
class Annotation:
    """Something a stage found in a block, published beside its audio.

    Attributes
    ----------
    kind : {"anomaly", "spectrum"}
        The wire topic kind it goes out on (``KIND/STREAM``).
    fields : dict
        JSON-serialisable header fields beyond the common ones (docs/wire-format.md);
        for ``anomaly``: ``state``, ``event_id``, ``start_s``, ``score``, ...
    array : ndarray of float32, optional
        A payload (band energies for ``spectrum``).
    """

    kind: Literal["anomaly", "spectrum"]
    fields: dict[str, Any]
    array: npt.NDArray[np.float32] | None = None


@dataclass(slots=True)
class Block:
    """One contiguous chunk of one stream.

    A value: stages make new blocks (`with_samples`, `annotated`) and never assign to
    a block's fields, since sinks on other threads hold the same block. Not a frozen
    dataclass only because its ``__init__`` costs ~0.9 us against 0.15 here, once per
    stage per block.

    Attributes
    ----------
    samples : ndarray of float32, shape (channels, frames)
        C-contiguous; ``frames`` may be 0.
    stream : str
        Name of the stream (the ``STREAM`` part of wire topics).
    seq : int
        0, 1, 2, ... for the life of the stream, assigned by the source. A gap
        downstream means a block was dropped.
    t0 : int
        Index of the first sample since the stream started.
    rate : int
        Sample rate, Hz.
    captured_ns : int
        ``time.monotonic_ns()`` when the block's last sample was captured or read.
    annotations : tuple of Annotation
        What stages found in this block (events, spectra), in stage order.
    """

    samples: npt.NDArray[np.float32]
    stream: str
    seq: int
    t0: int
    rate: int
    captured_ns: int
    annotations: tuple[Annotation, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    def with_samples(self, samples: npt.NDArray[np.float32]) -> Block:
        """The same block (metadata and annotations unchanged) carrying other samples."""
        # Direct construction: dataclasses.replace costs several times as much.
        return Block(
            samples, self.stream, self.seq, self.t0, self.rate, self.captured_ns, self.annotations
        )

    def annotated(self, *annotations: Annotation) -> Block:
        """The same block with ``annotations`` added after those it has."""
        return replace(self, annotations=self.annotations + annotations)


def whole_blocks(
    samples: npt.NDArray[np.float32], size: int, stream: str, rate: int
) -> list[Block]:
    """``samples`` (channels, frames) cut into C-contiguous blocks of ``size`` frames, seq
    0, 1, ...; a last partial block is left out (benchmarks time whole blocks)."""
    frames = samples.shape[1]
    return [
        Block(np.ascontiguousarray(samples[:, i : i + size]), stream, k, i, rate, 0)
        for k, i in enumerate(range(0, frames - size + 1, size))
    ]
