"""The unit of data that flows through a pipeline: one chunk of one stream."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from streamer.errors import BlockLayoutError

__all__ = ["Block", "StreamLayout"]


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """What every block of one stream shares: channel count and sample rate (Hz)."""

    channels: int
    rate: int

    def check(self, block: Block, who: str) -> None:
        """Raise `BlockLayoutError` if ``block`` does not fit this layout."""
        n_ch = block.samples.shape[0]
        if n_ch != self.channels:
            raise BlockLayoutError(
                f"block has {n_ch} channels, {who} was built for {self.channels}"
            )
        if block.rate != self.rate:
            raise BlockLayoutError(
                f"block rate is {block.rate} Hz, {who} was built for {self.rate} Hz"
            )


@dataclass(frozen=True, slots=True)
class Block:
    """One contiguous chunk of one stream.

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
    """

    samples: npt.NDArray[np.float32]
    stream: str
    seq: int
    t0: int
    rate: int
    captured_ns: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    def with_samples(self, samples: npt.NDArray[np.float32]) -> Block:
        """The same block (metadata unchanged) carrying other samples."""
        return replace(self, samples=samples)
