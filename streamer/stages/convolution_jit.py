"""Compiled (numba) per-block path of `streamer.stages.convolution.PartitionedConvolver`.

A 256-frame block of a long filter costs the numpy kernel ~16 us, most of it in the ~12
numpy calls of the head path (each ~1 us of Python and dispatch around a few hundred ns
of arithmetic). Here the whole head path of a block (ring write, the 2P-point FFT pair
by DUCC0 through rocket-fft's low-level ``r2c``/``c2r``, the products, the output and
the head's delay-line MAC) is one call. The levels k >= 1 stay in Python: they run
once per many blocks, on FFTW-sized transforms where call overhead does not matter,
and only their MAC comes from here (fused: one pass instead of numpy's multiply into
scratch and reduce).

The arithmetic is numpy's, term by term and in the same order (no fastmath), and
DUCC0 is the FFT library numpy and scipy.fft use, so the output equals the numpy
kernel's (bit for bit on the reference machine; the tests allow rounding).

Compiled functions are cached on disk (``cache=True``) next to this file, or where
``NUMBA_CACHE_DIR`` says: the first process compiles each signature (~2 s), later ones
load it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from rocket_fft import c2r, r2c

__all__ = ["head_run", "mac"]

# The transforms run along the frames axis of (streams, channels, frames) arrays.
FRAMES_AXIS = np.array([2], dtype=np.int64)

_jit = njit(cache=True, nogil=True, error_model="numpy")


@_jit
def mac(spectra: Any, fdl: Any, acc: Any, slot: int) -> None:  # pragma: no cover - compiled
    """acc = sum_i spectra[N - 1 - slot + i] * fdl[i]: a delay-line multiply-accumulate.

    ``spectra`` is the doubled layout of `convolution._doubled` (2N - 1, 1, rows, bins),
    rows 1 (shared) or channels; ``fdl`` (N, streams, channels, bins); ``acc``
    (streams, channels, bins). Summed over i in order, as numpy's reduction does.
    """
    count = fdl.shape[0]
    base = count - 1 - slot
    streams, channels, bins = acc.shape
    shared = spectra.shape[2] == 1
    for s in range(streams):
        for c in range(channels):
            row = 0 if shared else c
            total = acc[s, c]
            h = spectra[base, 0, row]
            f = fdl[0, s, c]
            for b in range(bins):
                total[b] = h[b] * f[b]
            for i in range(1, count):
                h = spectra[base + i, 0, row]
                f = fdl[i, s, c]
                for b in range(bins):
                    total[b] += h[b] * f[b]


@_jit
def head_run(  # pragma: no cover - compiled
    x: Any,
    out: Any,
    i: int,
    pos: int,
    slot: int,
    p0: int,
    ring: Any,
    scratch: Any,
    work: Any,
    conv: Any,
    h0: Any,
    fdl: Any,
    spectra: Any,
    acc: Any,
    tail: Any,
    level_size: int,
    axes: Any,
) -> tuple[int, int, int]:
    """Filter x[..., i:] into out[..., i:] through the head level, up to a level boundary.

    The same steps as the numpy path of `PartitionedConvolver.process` (see its Notes),
    one head partition (or the part of one the input holds) at a time. It stops after
    the input or at the first stream position that is a multiple of ``level_size``
    (0: no levels), where the caller runs the levels' chunks, and returns
    ``(i, pos, slot)``: frames consumed, the stream position and the head delay line's
    next slot.

    ``fdl`` holds the head's partitions 1..N-1 ((0, ...) when the head has one
    partition), ``spectra`` their doubled spectra and ``acc`` their sum A_T; ``tail``
    is the levels' time-domain ring, read and cleared as outputs are emitted.
    """
    frames = x.shape[2]
    streams, channels = x.shape[0], x.shape[1]
    ring_len = ring.shape[2] // 2
    mirror_len = ring_len // 2
    count = fdl.shape[0]
    tail_len = tail.shape[2]
    shared = h0.shape[1] == 1
    bins = p0 + 1
    scale = 1.0 / (2 * p0)
    while i < frames:
        r = pos % p0
        take = min(p0 - r, frames - i)
        end = r + take
        w = pos % ring_len
        for s in range(streams):
            for c in range(channels):
                for k in range(take):
                    ring[s, c, w + k] = x[s, c, i + k]
                if w < mirror_len:  # the mirror a window past the ring's end reads
                    for k in range(take):
                        ring[s, c, w + ring_len + k] = x[s, c, i + k]
        start = (pos - r - p0) % ring_len  # x_{T-1} starts here
        full = end == p0
        if full:
            window = ring[:, :, start : start + 2 * p0]
        else:
            # [x_{T-1} | r frames of x_T | zeros for the frames not yet here]
            for s in range(streams):
                for c in range(channels):
                    for k in range(p0 + end):
                        scratch[s, c, k] = ring[s, c, start + k]
                    for k in range(p0 + end, 2 * p0):
                        scratch[s, c, k] = 0.0
            window = scratch
        # A complete partition's spectrum X_T goes straight into the delay line.
        spec = fdl[slot] if full and count > 0 else work
        r2c(window, spec, axes, True, 1.0, 1)
        for s in range(streams):
            for c in range(channels):
                h = h0[0, 0 if shared else c]
                if count > 0:
                    for b in range(bins):
                        work[s, c, b] = spec[s, c, b] * h[b] + acc[s, c, b]
                else:
                    for b in range(bins):
                        work[s, c, b] = spec[s, c, b] * h[b]
        c2r(work, conv, axes, False, scale, 1)
        t = pos % tail_len
        for s in range(streams):
            for c in range(channels):
                if level_size > 0:
                    for k in range(take):
                        out[s, c, i + k] = conv[s, c, p0 + r + k] + tail[s, c, t + k]
                        tail[s, c, t + k] = 0.0  # read once; also clears a NaN
                else:
                    for k in range(take):
                        out[s, c, i + k] = conv[s, c, p0 + r + k]
        pos += take
        i += take
        if full:
            if count > 0:  # A_{T+1} for the next partition
                mac(spectra, fdl, acc, slot)
                slot = (slot + 1) % count
            if level_size > 0 and pos % level_size == 0:
                break
    return i, pos, slot
