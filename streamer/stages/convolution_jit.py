"""Compiled (numba) per-block path of `streamer.stages.convolution.PartitionedConvolver`.

A 256-frame block of a long filter costs the numpy kernel ~16 us, most of it in the ~12
numpy calls of the head path (each ~1 us of Python and dispatch around a few hundred ns
of arithmetic). Here the whole head path of a block (ring write, the 2P-point FFT pair,
the products, the output and the head's delay-line MAC) is one call. The levels k >= 1
run between calls, one `level_chunk` call per level boundary (once per many blocks).
Their MACs are fused: one pass instead of numpy's multiply into scratch and reduce.

A single row's FFTs are FFTW's when pyFFTW is installed (`FftwPlans`: plans made on
the buffers, executed from compiled code through the C function pointer; a 512-point
forward transform takes 0.40 us there against 1.29 us in DUCC0), else DUCC0's (the
library of numpy and scipy.fft) through rocket-fft's low-level ``r2c``/``c2r``, which
also takes several rows, vectorised across them (`convolution._compiled_fftw`).
The rest of the arithmetic is numpy's, term by term and in the same order (no
fastmath), so the output equals the numpy kernel's to rounding.

Compiled functions are cached on disk (``cache=True``) next to this file, in the user's
cache (``~/.cache/numba``) where the install is read-only, or where ``NUMBA_CACHE_DIR``
says: the first process compiles each signature (~2 s), later ones load it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from rocket_fft import c2r, r2c

__all__ = ["FftwPlans", "fftw_library", "fftw_threads_library", "head_run", "level_chunk"]

# The transforms run along the frames axis of (streams, channels, frames) arrays.
_FRAMES_AXIS = np.array([2], dtype=np.int64)

_jit = njit(cache=True, nogil=True, error_model="numpy")

# FFTW's planner flag for plans made in microseconds from a heuristic (fftw3.h).
_FFTW_ESTIMATE = 1 << 6


@lru_cache(maxsize=2)
def fftw_library(real: type[np.floating[Any]]) -> ctypes.CDLL | None:
    """The FFTW library pyFFTW loaded for float64 or float32 transforms, or None.

    pyFFTW's wheels carry FFTW in ``pyfftw.libs``; a pyFFTW built against the system's
    FFTW uses ``libfftw3.so``. Opening the same file again gives the same library (and
    planner) pyFFTW uses.
    """
    return _open_fftw("libfftw3" if real is np.float64 else "libfftw3f")


@lru_cache(maxsize=2)
def fftw_threads_library(real: type[np.floating[Any]]) -> ctypes.CDLL | None:
    """FFTW's threads library (OpenMP in pyFFTW's wheels) for float64 or float32, its
    threads initialised, or None: what makes a plan run on several threads."""
    stem = "libfftw3" if real is np.float64 else "libfftw3f"
    lib = _open_fftw(f"{stem}_omp") or _open_fftw(f"{stem}_threads")
    if lib is None:
        return None
    prefix = "fftw" if real is np.float64 else "fftwf"
    getattr(lib, f"{prefix}_init_threads")()  # pyFFTW has too; FFTW allows it again
    getattr(lib, f"{prefix}_plan_with_nthreads").argtypes = [ctypes.c_int]
    return lib


def _open_fftw(stem: str) -> ctypes.CDLL | None:
    """The FFTW library ``stem`` (``libfftw3``, ``libfftw3f_omp``, ...) pyFFTW uses."""
    try:
        pyfftw = importlib.import_module("pyfftw")
    except ImportError:
        return None
    package = Path(pyfftw.__file__ or ".").parent
    bundled = sorted((package.parent / "pyfftw.libs").glob(f"{stem}-*.so*"))
    name = str(bundled[0]) if bundled else ctypes.util.find_library(stem.removeprefix("lib"))
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class FftwPlans:
    """FFTW plans for a level's transforms: ``window`` -> ``spec`` and ``work`` -> ``time``.

    ``window`` and ``time`` are (streams, channels, 2P) real arrays, ``spec`` and
    ``work`` (streams, channels, P + 1) complex ones, all C-contiguous and of one
    precision; the plans are bound to them (FFTW_ESTIMATE: made in microseconds) and run
    on ``threads`` threads where FFTW's threads library is there (``self.threads``). The
    backward transform is unnormalised and overwrites ``work``. ``addresses`` is what
    `head_run` and `level_chunk` take: fftw_execute's address and the two plans, or
    zeros (transform with DUCC0) when ``enabled`` is false or FFTW cannot be loaded.
    The plans are destroyed with this object.

    FFTW's planner is not thread-safe (the wheels' FFTW lacks
    ``fftw_make_planner_thread_safe``), and pyFFTW's planning lock is private: like
    pyFFTW's own plans in `convolution._Fft`, these are made where the stage is built,
    which the pipeline does in one thread; executing plans is thread-safe.
    """

    def __init__(
        self, window: Any, spec: Any, work: Any, time: Any, *, enabled: bool, threads: int = 1
    ) -> None:
        lib = fftw_library(window.dtype.type) if enabled else None
        self.threads = 1
        if lib is None:
            self.addresses = np.zeros(3, np.int64)
            return
        prefix = "fftw" if window.dtype == np.float64 else "fftwf"
        threaded = fftw_threads_library(window.dtype.type) if threads > 1 else None
        if threaded is not None:
            self.threads = threads
            getattr(threaded, f"{prefix}_plan_with_nthreads")(threads)
        rows = window.shape[0] * window.shape[1]
        n, bins = window.shape[2], spec.shape[2]
        plan_r2c = getattr(lib, f"{prefix}_plan_many_dft_r2c")
        plan_c2r = getattr(lib, f"{prefix}_plan_many_dft_c2r")
        ptr, c_int = ctypes.c_void_p, ctypes.c_int
        # rank, n[], howmany, in, inembed, istride, idist, out, onembed, ostride, odist, flags
        argtypes = [c_int, ctypes.POINTER(c_int), c_int, ptr, ptr, c_int, c_int, ptr, ptr,
                    c_int, c_int, ctypes.c_uint]  # fmt: skip
        for plan in (plan_r2c, plan_c2r):
            plan.restype, plan.argtypes = ptr, argtypes
        size = (c_int * 1)(n)
        forward = plan_r2c(1, size, rows, window.ctypes.data, None, 1, n,
                           spec.ctypes.data, None, 1, bins, _FFTW_ESTIMATE)  # fmt: skip
        backward = plan_c2r(1, size, rows, work.ctypes.data, None, 1, bins,
                            time.ctypes.data, None, 1, n, _FFTW_ESTIMATE)  # fmt: skip
        if threaded is not None:  # later plans (pyFFTW sets its own) are single-threaded
            getattr(threaded, f"{prefix}_plan_with_nthreads")(1)
        if not forward or not backward:
            raise RuntimeError(f"FFTW made no plan for {rows} x {n} points")
        execute = ctypes.cast(getattr(lib, f"{prefix}_execute"), ptr).value
        self.addresses = np.array([execute, forward, backward], np.int64)
        destroy = getattr(lib, f"{prefix}_destroy_plan")
        destroy.argtypes = [ptr]
        for plan in (forward, backward):
            weakref.finalize(self, destroy, plan)


def _pointer_call(typingctx: Any, function: Any, argument: Any) -> Any:
    """``_call_with_pointer(function, argument)``: call ``void function(void *argument)``.

    Both are addresses (integers), so the compiled code holds no pointer of this
    process and can be cached on disk.
    """
    if not isinstance(function, types.Integer) or not isinstance(argument, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        pointer = ir.IntType(8).as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [pointer])
        callee = builder.inttoptr(args[0], function_type.as_pointer())
        builder.call(callee, [builder.inttoptr(args[1], pointer)])
        return context.get_dummy_value()

    return types.void(function, argument), codegen


_call_with_pointer: Any = intrinsic(_pointer_call)


@_jit
def _mac(spectra: Any, fdl: Any, acc: Any, slot: int) -> None:  # pragma: no cover - compiled
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
def _window_into(ring: Any, start: int, valid: int, dst: Any) -> None:  # pragma: no cover
    """dst[..., :valid] = ring[..., start : start + valid]; zeros after (FFTW's input)."""
    streams, channels, n = dst.shape
    for s in range(streams):
        for c in range(channels):
            for k in range(valid):
                dst[s, c, k] = ring[s, c, start + k]
            for k in range(valid, n):
                dst[s, c, k] = 0.0


@_jit
def _spectrum_into(spec: Any, fdl: Any, slot: int) -> None:  # pragma: no cover - compiled
    """fdl[slot] = spec, element by element: an array assignment may copy via a temporary."""
    streams, channels, bins = spec.shape
    for s in range(streams):
        for c in range(channels):
            for b in range(bins):
                fdl[slot, s, c, b] = spec[s, c, b]


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
    spec_buf: Any,
    work: Any,
    conv: Any,
    h0: Any,
    fdl: Any,
    spectra: Any,
    acc: Any,
    tail: Any,
    level_size: int,
    fftw: Any,
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
    ``fftw`` is `FftwPlans.addresses` (scratch -> spec_buf, work -> conv); zeros mean
    DUCC0, which transforms the ring's window in place of a copy.
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
    use_fftw = fftw[1] != 0
    # FFTW's backward transform is unnormalised; DUCC0's applies ``scale`` itself.
    out_scale = scale if use_fftw else 1.0
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
        into_fdl = full and count > 0  # a complete X_T also goes into the delay line
        if use_fftw or not full:
            # [x_{T-1} | r frames of x_T | zeros for the frames not yet here]
            _window_into(ring, start, p0 + end, scratch)
        if use_fftw:
            _call_with_pointer(fftw[0], fftw[1])
            spec = spec_buf
            if into_fdl:
                _spectrum_into(spec_buf, fdl, slot)
        else:
            window = ring[:, :, start : start + 2 * p0] if full else scratch
            spec = fdl[slot] if into_fdl else work
            r2c(window, spec, _FRAMES_AXIS, True, 1.0, 1)
        for s in range(streams):
            for c in range(channels):
                h = h0[0, 0 if shared else c]
                if count > 0:
                    for b in range(bins):
                        work[s, c, b] = spec[s, c, b] * h[b] + acc[s, c, b]
                else:
                    for b in range(bins):
                        work[s, c, b] = spec[s, c, b] * h[b]
        if use_fftw:
            _call_with_pointer(fftw[0], fftw[2])
        else:
            c2r(work, conv, _FRAMES_AXIS, False, scale, 1)
        t = pos % tail_len
        for s in range(streams):
            for c in range(channels):
                if level_size > 0:
                    for k in range(take):
                        out[s, c, i + k] = conv[s, c, p0 + r + k] * out_scale + tail[s, c, t + k]
                        tail[s, c, t + k] = 0.0  # read once; also clears a NaN
                else:
                    for k in range(take):
                        out[s, c, i + k] = conv[s, c, p0 + r + k] * out_scale
        pos += take
        i += take
        if full:
            if count > 0:  # A_{T+1} for the next partition
                _mac(spectra, fdl, acc, slot)
                slot = (slot + 1) % count
            if level_size > 0 and pos % level_size == 0:
                break
    return i, pos, slot


@_jit
def level_chunk(  # pragma: no cover - compiled
    ring: Any,
    start: int,
    window: Any,
    spec: Any,
    fdl: Any,
    spectra: Any,
    acc: Any,
    slot: int,
    conv: Any,
    tail: Any,
    t: int,
    fftw: Any,
    threads: int,
) -> None:
    """One boundary of a level of size Q: what `PartitionedConvolver._level_chunks` does.

    The newest input spectrum (of ring[..., start : start + 2Q]) goes into ``fdl[slot]``,
    ``acc`` becomes the delay line's MAC, and its transform's last Q values are added
    into tail[..., t : t + Q]. ``fftw`` is `FftwPlans.addresses` for window -> spec and
    acc -> conv (which overwrites ``acc``); zeros mean DUCC0, on ``threads`` threads.
    """
    streams, channels, n = window.shape
    size = n // 2
    use_fftw = fftw[1] != 0
    if use_fftw:
        _window_into(ring, start, n, window)
        _call_with_pointer(fftw[0], fftw[1])
        _spectrum_into(spec, fdl, slot)
    else:
        r2c(ring[:, :, start : start + n], fdl[slot], _FRAMES_AXIS, True, 1.0, threads)
    _mac(spectra, fdl, acc, slot)
    scale = 1.0 / n
    if use_fftw:
        _call_with_pointer(fftw[0], fftw[2])
    else:
        c2r(acc, conv, _FRAMES_AXIS, False, scale, threads)
    out_scale = scale if use_fftw else 1.0
    for s in range(streams):
        for c in range(channels):
            for k in range(size):
                tail[s, c, t + k] += conv[s, c, size + k] * out_scale
