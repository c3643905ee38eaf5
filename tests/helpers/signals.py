"""Seeded test signals, random block splits, and a driver that streams a signal through a stage."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streamer.block import Block
from streamer.stages.base import Stage

__all__ = ["feed", "noise", "random_splits", "tones"]


def noise(channels: int, frames: int, seed: int, *, level: float = 0.25) -> npt.NDArray[np.float32]:
    """White Gaussian noise of RMS ``level``, float32, shape (channels, frames)."""
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal((channels, frames))).astype(np.float32)


def tones(
    channels: int,
    frames: int,
    rate: int,
    freqs_hz: Sequence[float],
    seed: int,
    *,
    level: float = 0.25,
) -> npt.NDArray[np.float32]:
    """A sum of sines, each of amplitude ``level`` with a seeded random phase per channel.

    Returns float32 of shape (channels, frames); ``rate`` is in Hz.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    out = np.zeros((channels, frames))
    for f in freqs_hz:
        phase = rng.uniform(0, 2 * np.pi, size=(channels, 1))
        out += level * np.sin(2 * np.pi * f * t + phase)
    return out.astype(np.float32)


def random_splits(total: int, rng: np.random.Generator, max_block: int) -> list[int]:
    """Block sizes summing to ``total``, in seeded random order.

    Always includes a 0-frame block, a 1-frame block (when ``total >= 1``) and
    a ``max_block``-frame block (when ``total >= max_block + 1``); the rest are
    a random mix of 0, 1, short (2-63) and long (1-``max_block``) blocks. Pass a
    ``max_block`` above the stage's FFT size to get blocks longer than it.
    """
    if total < 0 or max_block < 1:
        raise ValueError(f"{total=} must be >= 0 and {max_block=} >= 1")
    sizes = [0]
    if total >= 1:
        sizes.append(1)
    if total >= max_block + 1:
        sizes.append(max_block)
    remaining = total - sum(sizes)
    while remaining > 0:
        kind = int(rng.integers(4))
        if kind == 0:
            n = 0
        elif kind == 1:
            n = 1
        elif kind == 2:
            n = int(rng.integers(2, 64))
        else:
            n = int(rng.integers(1, max_block + 1))
        n = min(n, remaining)
        sizes.append(n)
        remaining -= n
    rng.shuffle(sizes)
    return sizes


def feed(
    stage: Stage, x: npt.NDArray[np.float32], sizes: Sequence[int], rate: int
) -> npt.NDArray[np.float32]:
    """Stream ``x`` (channels, frames) through ``stage`` in blocks of ``sizes``; join the output.

    Checks the stage's contract on every block: metadata kept, output fresh,
    float32, C-contiguous, shape (channels, frames of the input block).
    """
    assert sum(sizes) == x.shape[1], "sizes must cover the signal"
    outs: list[npt.NDArray[np.float32]] = []
    start = 0
    for seq, n in enumerate(sizes):
        samples = np.ascontiguousarray(x[:, start : start + n])
        block = Block(samples=samples, stream="test", seq=seq, t0=start, rate=rate, captured_ns=seq)
        result = stage.process(block)
        y = result.samples
        assert (result.stream, result.seq, result.t0, result.rate, result.captured_ns) == (
            "test",
            seq,
            start,
            rate,
            seq,
        )
        assert y.dtype == np.float32
        assert y.shape == samples.shape
        assert y.flags.c_contiguous and y.flags.writeable
        assert not np.shares_memory(y, samples)
        assert not any(np.shares_memory(y, prev) for prev in outs[-1:])
        outs.append(y)
        start += n
    return np.concatenate(outs, axis=1) if outs else x[:, :0].copy()
