"""Streaming FIR convolution kernels: single-FFT overlap-save and (non-)uniformly partitioned."""

from __future__ import annotations

import importlib
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import scipy.fft as sp_fft

from streamer.errors import BackendUnavailableError

__all__ = [
    "Algorithm",
    "Convolver",
    "FftLibrary",
    "Kernel",
    "Level",
    "OverlapSaveConvolver",
    "PartitionedConvolver",
    "Plan",
    "Precision",
    "choose_plan",
    "fft_size_for",
    "make_convolver",
    "partition_size",
]

Algorithm = Literal["overlap-save", "partitioned", "nonuniform"]
"""A convolution algorithm; ``"auto"`` in a config means `choose_plan` picks one."""
Precision = Literal["float64", "float32"]
"""The float type the FFTs and spectra compute in (input and output stay float32)."""

Taps = npt.NDArray[np.float64]
Real = npt.NDArray[np.floating[Any]]
Complex = npt.NDArray[np.complexfloating[Any, Any]]
RealType = type[np.floating[Any]]
ComplexType = type[np.complexfloating[Any, Any]]

# Largest partition a non-uniform plan uses (an rfft of 2 x 2**17 frames): beyond it, a
# longer filter only gets more partitions in its last level. This bounds the memory of one
# level (2 * 2**17 frames of input history per row) and the work of one boundary.
_MAX_PARTITION = 1 << 17

# scipy.fft's ``workers`` splits a batch of 1-D transforms over threads, never one
# transform. Measured on a 2-core EPYC (scipy 1.17, float64): 8 rows of 32768 frames,
# rfft 772 -> 480 us with 2 workers; 8 rows of 8192, 175 -> 194 us (slower: the thread
# start-up costs more than it saves); 2 rows of 32768, no change. So workers are only
# passed for transforms of at least this many values (rows x length) and >= 2 rows.
_WORKERS_MIN_VALUES = 1 << 17


def _workers_for(n: int, rows: int, workers: int) -> int:
    """The threads a transform of length ``n`` over ``rows`` rows gets of ``workers``."""
    return workers if rows >= 2 and rows * n >= _WORKERS_MIN_VALUES else 1


def fft_size_for(numtaps: int, block: int) -> int:
    """The single-FFT overlap-save length for ``numtaps`` taps and blocks of ``block`` frames.

    Parameters
    ----------
    numtaps : int
        Filter length M, >= 1.
    block : int
        Typical block length B of the stream, frames, >= 1.

    Returns
    -------
    int
        The smallest fast real-FFT length N >= B + M - 1, so that one FFT pair
        yields L = N - M + 1 >= B new output frames.

    Raises
    ------
    ValueError
        ``numtaps`` or ``block`` below 1.
    """
    if numtaps < 1:
        raise ValueError(f"{numtaps=} must be >= 1")
    if block < 1:
        raise ValueError(f"{block=} must be >= 1")
    # Cost model, as in scipy.signal._signaltools._calc_oa_lens: a chunk of
    # L = N - M + 1 new frames costs one real FFT pair of length N, so the work
    # per output frame is C(N) ~ N log2(2N) / (N - M + 1). scipy minimises C over
    # N alone (N = -K W_{-1}(-1 / (2 e K)) with K = M - 1, several times M). A
    # stream also has a block size B, and an N with L < B would split every
    # block, while an N with L >> B makes every short chunk pay for a long FFT.
    # So we take the smallest fast N with L >= B: one block is one FFT pair.
    # That is within ~1.3x of scipy's optimum for B >= 2M, but ~M/B times worse
    # for B << M (6.4x for M = 2049, B = 256): partitioned convolution (below) fixes that.
    fast: int = sp_fft.next_fast_len(block + numtaps - 1, real=True)
    return fast


def partition_size(block: int) -> int:
    """The head partition length P for blocks of ``block`` frames.

    Parameters
    ----------
    block : int
        Typical block length B, frames, >= 1.

    Returns
    -------
    int
        The smallest P >= B whose FFT length 2P is fast (5-smooth). Blocks of B
        frames then fill partitions exactly, one FFT pair each, and the larger
        partitions P * 2**k of a non-uniform plan stay 5-smooth too.

    Raises
    ------
    ValueError
        ``block`` below 1.
    """
    if block < 1:
        raise ValueError(f"{block=} must be >= 1")
    n: int = sp_fft.next_fast_len(2 * block, real=True)
    while n % 2:  # 5-smooth but odd: not twice an integer
        n = sp_fft.next_fast_len(n + 1, real=True)
    return n // 2


# numpy >= 2.0 transforms into a given array (out=); scipy.fft (<= 1.17) has no out= and
# ignores overwrite_x for real transforms (pocketfft basic.py: "not utilised"), so every
# scipy call allocates its result. Measured on the reference machine, us per rfft / irfft
# of one row, numpy's gufunc (see `_pocketfft_gufuncs`) vs scipy.fft, float64: n = 512:
# 3.3 / 3.5 vs 5.3 / 6.3; n = 1024: 7.8 / 8.5 vs 11.0 / 7.9; n = 2048: 9.4 / 10.4 vs
# 10.0 / 11.5; n = 4096: 18.8 / 21.3 vs 17.9 / 22.1; n = 8192: 39.8 / 43.9 vs 36.6 / 39.4.
# 8 rows alike. float32: the gufunc wins for one row up to n = 1024 (6.2 vs 6.8), scipy
# for several rows at every size (8 x 1024: 13.8 vs 20.2). Through the public
# numpy.fft wrapper (~2 us more per call) numpy only wins up to n = 512.
_NUMPY_HAS_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _pocketfft_gufuncs() -> tuple[Any, Any] | None:
    """numpy's own rfft (even n) and irfft gufuncs, if they behave as numpy.fft calls them.

    ``numpy.fft.rfft(x, out=)`` is a Python wrapper (norm, axis and shape checks) around
    the gufunc ``numpy.fft._pocketfft_umath.rfft_n_even(x, fct, out=)``; calling it
    directly saves ~2 us of the ~5.5 us a 512-point transform costs on the reference
    machine (irfft alike), i.e. ~4 us per block on the head path. It is a private
    module, so it is checked once here against the public functions, and any
    difference (or a numpy without it) falls back to ``numpy.fft``.
    """
    try:
        pfu = importlib.import_module("numpy.fft._pocketfft_umath")
        rfft_even, irfft = pfu.rfft_n_even, pfu.irfft
        x = np.arange(8.0)[np.newaxis] + 0.5
        spec = np.empty((1, 5), np.complex128)
        back = np.empty((1, 8), np.float64)
        rfft_even(x, 1.0, out=spec)
        irfft(spec, 1 / 8, out=back)
        if np.allclose(spec, np.fft.rfft(x)) and np.allclose(back, x):
            return rfft_even, irfft
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    return None


_GUFUNCS = _pocketfft_gufuncs() if _NUMPY_HAS_OUT else None
# Longest transform numpy computes (into our arrays); scipy.fft above it.
_NUMPY_FFT_MAX = 2048 if _GUFUNCS is not None else 512


FftLibrary = Literal["auto", "scipy", "pyfftw"]


def _compiled_fftw(library: FftLibrary, rows: int) -> bool:
    """Whether the compiled path transforms ``rows`` rows with FFTW (else DUCC0).

    FFTW for one row: a 512-point pair 0.8 us against DUCC0's 2.6. DUCC0 for several
    (unless pyFFTW is asked for by name), since it vectorises across rows where FFTW's
    estimated plans loop over them: a level boundary of 8 rows took 133 / 291 / 2446 /
    10578 us with DUCC0 at Q = 2048 / 4096 / 16384 / 65536 against FFTW's 167 / 482 /
    3657 / 18320 (mono: FFTW 20 / 47 / 330 / 2148, DUCC0 31 / 66 / 358 / 1932), and an
    8-row head block at P0 = 256 / 4096 15.7 / 304 us against 18.4 / 352.
    """
    return _pyfftw(library) is not None and (rows == 1 or library == "pyfftw")


def _pyfftw(library: FftLibrary) -> Any:
    """The pyfftw module when ``library`` wants it and it is installed, else None.

    Raises
    ------
    BackendUnavailableError
        ``library = "pyfftw"`` and pyFFTW is not installed.
    """
    if library == "scipy":
        return None
    try:
        return importlib.import_module("pyfftw")
    except ImportError:
        if library == "pyfftw":
            raise BackendUnavailableError(
                "fft_library 'pyfftw' was asked for but pyFFTW is not installed "
                "(pip install pyfftw)"
            ) from None
        return None


Kernel = Literal["auto", "numba", "numpy"]
"""Who runs the partitioned kernels' per-block path: compiled by numba, or numpy calls."""


def _compiled(kernel: Kernel) -> Any:
    """`streamer.stages.convolution_jit` when ``kernel`` wants it and numba is installed.

    Raises
    ------
    BackendUnavailableError
        ``kernel = "numba"`` and numba or rocket-fft is missing.
    """
    if kernel == "numpy":
        return None
    if kernel not in ("auto", "numba"):
        raise ValueError(f"unknown {kernel=}")
    try:
        return importlib.import_module("streamer.stages.convolution_jit")
    except ImportError as exc:
        if kernel == "numba":
            raise BackendUnavailableError(
                f"kernel 'numba' was asked for but cannot be loaded ({exc}; "
                "pip install numba rocket-fft)"
            ) from None
        return None


def _transform_paths(
    kernel: Kernel, fft_library: FftLibrary, precision: Precision
) -> tuple[HeadPath, bool]:
    """For the cost model: how the kernels' head will run, and whether FFTW is there."""
    fftw = _pyfftw(fft_library) is not None
    compiled = _compiled(kernel)
    if compiled is None:
        return "numpy", fftw
    if fftw and compiled.fftw_library(_dtypes(precision)[0]) is not None:
        return "fftw", fftw
    return "ducc", fftw


def _numpy_fft_pays(n: int, rows: int, single: bool, workers: int) -> bool:
    """Whether numpy (out=, no allocation) beats scipy.fft for this transform (see above)."""
    if not _NUMPY_HAS_OUT or workers > 1:
        return False
    if single:
        return rows == 1 and n <= min(_NUMPY_FFT_MAX, 1024) and _GUFUNCS is not None
    return n <= _NUMPY_FFT_MAX


# ------------------------------------------------------------------ the cost model


@dataclass(frozen=True, slots=True)
class Level:
    """One uniformly partitioned part of a filter: taps [offset, offset + count * size).

    Attributes
    ----------
    size : int
        Partition length P, frames; the level runs one FFT pair of length 2P
        per P input frames.
    count : int
        Number of partitions N; the level's frequency-domain delay line holds N
        input spectra (N - 1 for the head level, whose first partition is applied
        to the live, possibly partial, input partition).
    offset : int
        Index of the level's first tap: 0 for the head level, else a multiple of
        ``size`` and >= ``size`` (see `PartitionedConvolver`).
    """

    size: int
    count: int
    offset: int


@dataclass(frozen=True, slots=True)
class Plan:
    """How a filter is applied: the algorithm, its FFT sizes and its modelled cost.

    Attributes
    ----------
    algorithm : {"overlap-save", "partitioned", "nonuniform"}
        ``partitioned`` is uniform: one level.
    nfft : int
        The longest FFT length used.
    fft_block : int
        Frames one FFT pair of the most frequent transform yields: the
        overlap-save L = N - M + 1, or the head partition P.
    levels : tuple of Level
        Empty for overlap-save.
    cost : float
        Modelled cost, ns per frame of one stream (all its channels) on the
        reference machine; only comparisons between plans mean something.
    """

    algorithm: Algorithm
    nfft: int
    fft_block: int
    levels: tuple[Level, ...]
    cost: float


# Cost constants, ns, measured on the reference machine (2-core AMD EPYC VM, numpy 2.4,
# scipy 1.17, float64; see docs/fir.md). They only need to be right relative to each
# other: the model ranks plans, it does not predict absolute times.
#   An rfft + irfft pair of length n over R rows: a fixed cost per call (1.6 us through
#   numpy's gufunc, 4 us through scipy.fft) plus 0.7 ns per n log2 n for the first row
#   and 0.6 of that for each further one (pocketfft vectorises across rows). Measured
#   pairs: 64 x 1: 3.2 us; 512 x 1: 6.8; 512 x 8: 18.2; 4096 x 1: 38; 4096 x 8: 166;
#   65536 x 1: 725; 65536 x 8: 3713.
_FFT_CALL_NUMPY_NS = 1_600.0
_FFT_CALL_SCIPY_NS = 4_000.0
_FFT_NS = 0.7
_FFT_ROW_SHARE = 0.6
#   Through pyFFTW (the transforms numpy does not take, when it is installed): 1.5 us per
#   call with its copy in or out, 0.22 ns per n log2 n per row. Pairs: 4096 points 12 us,
#   8192 23 us, 131072 0.66 ms.
_FFT_CALL_FFTW_NS = 1_500.0
_FFTW_NS = 0.22
#   A multiply-accumulate over a delay line (multiply into scratch, reduce over the
#   partitions): ~1.5 us per call, 1.0 ns per complex element for one row (15 x 4097:
#   62 us) and 1.7 ns with several rows sharing a filter (numpy buffers the broadcast;
#   8 x 15 x 4097: 964 us, 8 x 15 x 257: 43 us).
_MAC_CALL_NS = 1_500.0
_MAC_NS = 1.0
_MAC_ROWS_NS = 1.7
#   Everything else that touches each value once (casting copies, complex adds):
_COPY_NS = 0.4
#   Python and small numpy calls (slices, fills, bookkeeping) per overlap-save chunk, per
#   head partition and per level boundary: the kernels' time at M = 31, B = 32 minus
#   their FFT pair (7.3 us - 3.2 us per block for both overlap-save and one partition).
_OLS_CHUNK_NS = 3_500.0
_HEAD_NS = 3_500.0
_LEVEL_NS = 2_500.0
# The compiled head (`convolution_jit.head_run`), fitted to head-only plans (P0 = 32 to
# 4096, 1 to 16 partitions, 1 and 8 rows) run through `PartitionedConvolver.process`:
# per head partition a fixed cost (the call, numba's dispatch, the levels check), then
# per row 0.32 ns per n log2 n of the 2 P0 transform pair with FFTW (0.45 for the first
# row with DUCC0), and 0.45 ns per complex element of its fused MAC (0.31-0.52 measured;
# also the levels' MAC). Mono, 1 partition: P0 = 256 3.4 us (FFTW) / 5.1 us (DUCC0);
# P0 = 4096 35 / 51 us.
_COMPILED_CALL_NS = {"fftw": 1_800.0, "ducc": 2_900.0}
_COMPILED_FFT_NS = {"fftw": 0.32, "ducc": 0.45}
_COMPILED_FFT_ROW_NS = 0.32
_COMPILED_MAC_NS = 0.45

HeadPath = Literal["numpy", "fftw", "ducc"]
"""What the cost model prices the head with: numpy calls, or compiled with FFTW or DUCC0."""


def _fft_pair_ns(n: int, rows: int, fftw: bool) -> float:
    """Modelled time of one rfft + irfft of length ``n`` over ``rows`` rows (`_Fft`)."""
    numpy = _numpy_fft_pays(n, rows, False, 1)
    rows_factor = 1.0 + _FFT_ROW_SHARE * (rows - 1)
    if fftw and not numpy:
        return 2.0 * _FFT_CALL_FFTW_NS + _FFTW_NS * rows * n * math.log2(max(n, 2))
    call = _FFT_CALL_NUMPY_NS if numpy else _FFT_CALL_SCIPY_NS
    return 2.0 * call + _FFT_NS * rows_factor * n * math.log2(max(n, 2))


def _mac_ns(count: int, bins: int, rows: int, head: HeadPath = "numpy") -> float:
    """Modelled time of a delay-line MAC over ``count`` partitions of ``bins`` bins."""
    if count < 1:
        return 0.0
    if head != "numpy":
        return _COMPILED_MAC_NS * rows * count * bins
    per_element = _MAC_NS if rows == 1 else _MAC_ROWS_NS
    return _MAC_CALL_NS + per_element * rows * count * bins


def _ols_cost(numtaps: int, block: int, rows: int, fftw: bool) -> tuple[float, int]:
    nfft = fft_size_for(numtaps, block)
    bins = nfft // 2 + 1
    # Per block of B frames (one chunk, since L >= B): copies of history, block, tail and
    # overlap (~2 N values), one FFT pair of length N, one complex multiply, the output.
    per_block = (
        _OLS_CHUNK_NS
        + _fft_pair_ns(nfft, rows, fftw)
        + rows * (bins * _MAC_NS + (2 * nfft + block) * _COPY_NS)
    )
    return per_block / block, nfft


def _head_cost(
    p0: int, count: int, block: int, rows: int, head: HeadPath, fftw: bool
) -> float:
    """ns per frame of the head level: P0 frames, ``count`` partitions, blocks of B."""
    bins = p0 + 1
    # What each row's partition touches besides its transforms: the ring write, the
    # window copy, the product and the output (the numpy path's copies, below, too).
    copies = rows * (2 * bins + 3 * p0) * _COPY_NS
    if head != "numpy":
        n = 2 * p0
        fft = (_COMPILED_FFT_NS[head] + _COMPILED_FFT_ROW_NS * (rows - 1)) * n * math.log2(n)
        per_call = _COMPILED_CALL_NS[head] + fft + _mac_ns(count - 1, bins, rows, head)
        return (per_call + copies) / min(p0, block)
    # Per head partition: one FFT pair of 2 P0, multiply by H_0 and add the tail sum
    # (2 passes over the bins), the output and tail-ring passes, and the MAC over the
    # other count - 1 partitions. A block B < P0 still costs a whole partition's work.
    per_partition = (
        _HEAD_NS + _fft_pair_ns(2 * p0, rows, fftw) + _mac_ns(count - 1, bins, rows) + copies
    )
    return per_partition / min(p0, block)


def _level_cost(size: int, count: int, rows: int, head: HeadPath, fftw: bool) -> float:
    """ns per frame of a level k >= 1: one boundary every ``size`` frames."""
    bins = size + 1
    per_boundary = (
        _LEVEL_NS
        + _fft_pair_ns(2 * size, rows, fftw)
        + _mac_ns(count, bins, rows, head)
        + rows * (bins + size) * _COPY_NS
    )
    return per_boundary / size


@lru_cache(maxsize=4096)
def _tail_levels(
    numtaps: int, size: int, rows: int, head: HeadPath, fftw: bool
) -> tuple[float, tuple[Level, ...]]:
    """Cheapest levels covering taps [size, numtaps), the first of partition ``size``.

    Levels k >= 1 start at their own partition size (offset = P_k, see
    `PartitionedConvolver`), so a level of size P followed by one of size rP holds
    exactly r - 1 partitions; the last level holds as many as the filter needs.
    """
    last = math.ceil((numtaps - size) / size)
    best: tuple[float, tuple[Level, ...]] = (
        _level_cost(size, last, rows, head, fftw),
        (Level(size, last, size),),
    )
    ratio = 2
    while ratio * size < numtaps and ratio * size <= _MAX_PARTITION:
        rest_cost, rest = _tail_levels(numtaps, ratio * size, rows, head, fftw)
        cost = _level_cost(size, ratio - 1, rows, head, fftw) + rest_cost
        if cost < best[0]:
            best = (cost, (Level(size, ratio - 1, size), *rest))
        ratio *= 2
    return best


def choose_plan(
    numtaps: int,
    block: int,
    rows: int = 1,
    algorithm: Algorithm | Literal["auto"] = "auto",
    head: HeadPath = "numpy",
    fftw: bool = False,
) -> Plan:
    """Pick the convolution algorithm and its sizes for a filter and a block size.

    Parameters
    ----------
    numtaps : int
        Filter length M, >= 1.
    block : int
        Typical block length B, frames, >= 1.
    rows : int, optional
        Rows filtered together (streams x channels). Default 1.
    algorithm : {"auto", "overlap-save", "partitioned", "nonuniform"}, optional
        Force an algorithm, or let the cost model choose (default).
    head : {"numpy", "fftw", "ducc"}, optional
        How the partitioned kernels' head will run: numpy calls (default), or
        compiled (`kernel = "numba"`) with FFTW's or DUCC0's transforms.
    fftw : bool, optional
        Whether pyFFTW computes the transforms numpy does not take. Default False
        (scipy.fft).

    Returns
    -------
    Plan
        The cheapest plan of the requested algorithm(s).

    Raises
    ------
    ValueError
        ``numtaps``, ``block`` or ``rows`` below 1, or an unknown ``algorithm``.

    Notes
    -----
    Costs are ns per frame on the reference machine, from the constants above:

    - overlap-save, FFT length N = `fft_size_for` (M, B): per block one FFT pair
      of length N, i.e. ~ (2 c_call + 2 c_fft N log2 N) / B. Cheapest when M is
      small against B (few wasted FFT points), and the only algorithm whose FFT
      size grows with M for every block.
    - uniformly partitioned, P = `partition_size` (B), N_p = ceil(M / P): per
      block one FFT pair of length 2P plus a multiply-accumulate over N_p
      partitions of P + 1 bins, i.e. ~ (2 c_call + 4 c_fft P log2 2P) / P
      + c_mac N_p. The MAC grows like M / P per frame: good while M is a few P.
    - non-uniform: a head level of P frames and levels of P * 2**k frames, each
      its own uniform partitioning (`Level`). A level of size Q and n partitions
      costs ~ (2 c_call + 4 c_fft Q log2 2Q) / Q + c_mac n per frame, so the
      large levels cover most taps at a few MACs per frame each. The split is
      found by dynamic programming over the sizes (`_tail_levels`), the
      Gardner (1995) / Garcia (2002) idea with this cost function.

    The fixed cost per call of numpy and scipy.fft (1.6 to 4 us per transform
    on the reference machine) dominates small blocks, so it is in the model.
    """
    if numtaps < 1:
        raise ValueError(f"{numtaps=} must be >= 1")
    if block < 1:
        raise ValueError(f"{block=} must be >= 1")
    if rows < 1:
        raise ValueError(f"{rows=} must be >= 1")
    plans: list[Plan] = []
    if algorithm in ("auto", "overlap-save"):
        cost, nfft = _ols_cost(numtaps, block, rows, fftw)
        plans.append(Plan("overlap-save", nfft, nfft - numtaps + 1, (), cost))
    p0 = partition_size(block)
    if algorithm in ("auto", "partitioned"):
        count = math.ceil(numtaps / p0)
        cost = _head_cost(p0, count, block, rows, head, fftw)
        plans.append(Plan("partitioned", 2 * p0, p0, (Level(p0, count, 0),), cost))
    if algorithm in ("auto", "nonuniform"):
        best: Plan | None = None
        ratio = 2
        # The head level of P0 is followed by a level of r P0 (offset r P0): r partitions.
        while ratio * p0 < numtaps and ratio * p0 <= _MAX_PARTITION:
            rest_cost, rest = _tail_levels(numtaps, ratio * p0, rows, head, fftw)
            cost = _head_cost(p0, ratio, block, rows, head, fftw) + rest_cost
            if best is None or cost < best.cost:
                levels = (Level(p0, ratio, 0), *rest)
                nfft = 2 * max(level.size for level in levels)
                best = Plan("nonuniform", nfft, p0, levels, cost)
            ratio *= 2
        if best is None:  # M <= 2 P0: nothing to split; one level is the non-uniform plan
            count = math.ceil(numtaps / p0)
            cost = _head_cost(p0, count, block, rows, head, fftw)
            best = Plan("nonuniform", 2 * p0, p0, (Level(p0, count, 0),), cost)
        plans.append(best)
    if not plans:
        raise ValueError(f"unknown {algorithm=}")
    return min(plans, key=lambda plan: plan.cost)


# ------------------------------------------------------------------- the kernels


class Convolver(Protocol):
    """A streaming FIR filter over a batch of streams: the kernels' common interface."""

    plan: Plan

    def process(self, x: Real, out: Real) -> None:
        """Filter ``x`` (streams, channels, frames) into ``out`` of the same shape."""
        ...

    def reset(self) -> None:
        """Forget all input, as if just built."""
        ...


def _dtypes(
    precision: Precision,
) -> tuple[RealType, ComplexType]:
    if precision == "float64":
        return np.float64, np.complex128
    if precision == "float32":
        return np.float32, np.complex64
    raise ValueError(f"unknown {precision=}")


class _Fft:
    """rfft/irfft of one length over (streams, channels) rows: numpy out=, scipy.fft or FFTW.

    Transforms numpy does not take go to FFTW (pyFFTW, planned with FFTW_ESTIMATE on
    aligned arrays of our own) when ``library`` allows and pyFFTW is installed, else to
    scipy.fft. FFTW's 131072-point float64 pair takes 0.66 ms here, scipy's 2.9 ms;
    its 4096-point pair 12 us, scipy's 40 us.
    """

    def __init__(
        self,
        n: int,
        shape: tuple[int, int],
        real: RealType,
        cplx: ComplexType,
        workers: int,
        library: FftLibrary = "auto",
    ) -> None:
        self.n = n
        rows = shape[0] * shape[1]
        self.workers = _workers_for(n, rows, workers)
        numpy = _numpy_fft_pays(n, rows, real is np.float32, self.workers)
        self._numpy_rfft = numpy
        self._numpy_irfft = numpy
        self._fftw: tuple[Any, Any] | None = None
        pyfftw = _pyfftw(library)
        if not numpy and pyfftw is not None:
            flags = ("FFTW_ESTIMATE",)
            src = pyfftw.empty_aligned((*shape, n), dtype=real)
            spec = pyfftw.empty_aligned((*shape, n // 2 + 1), dtype=cplx)
            # c2r transforms overwrite their input: the backward plan has its own.
            back_in = pyfftw.empty_aligned((*shape, n // 2 + 1), dtype=cplx)
            back_out = pyfftw.empty_aligned((*shape, n), dtype=real)
            self._fftw = (
                pyfftw.FFTW(src, spec, axes=(-1,), flags=flags, threads=self.workers),
                pyfftw.FFTW(back_in, back_out, axes=(-1,), direction="FFTW_BACKWARD",
                            flags=flags, threads=self.workers),
            )  # fmt: skip
        self._gufuncs = _GUFUNCS if n % 2 == 0 else None
        self._scale = 1.0 / n  # irfft's normalisation, for the gufunc
        # Results of the numpy path live here until the next call of the same kind.
        self._spec: Complex = np.zeros((*shape, n // 2 + 1), cplx)
        self._time: Real = np.zeros((*shape, n), real)

    def rfft(self, x: Real, out: Complex | None = None) -> Complex:
        """Spectrum of ``x``: in ``out`` if given, else in an array owned until the next call."""
        if self._numpy_rfft:
            dest = self._spec if out is None else out
            if self._gufuncs is not None:
                spec: Complex = self._gufuncs[0](x, 1.0, out=dest)
                return spec
            # numpy's stubs type out= as complex128 only; float32 input takes complex64 too.
            spec = np.fft.rfft(x, self.n, axis=-1, out=dest)  # type: ignore[arg-type]
            return spec
        if self._fftw is not None:
            forward = self._fftw[0]
            # COPY: into FFTW's aligned input (the ring's windows are views at any offset).
            forward.input_array[...] = x
            spec = forward()
        else:
            spec = sp_fft.rfft(x, self.n, axis=-1, workers=self.workers)
        if out is None:
            return spec
        # COPY: scipy.fft cannot transform into the delay line.
        out[...] = spec
        return out

    def irfft(self, spec: Complex) -> Real:
        """Signal of ``spec`` (not modified), owned by the caller until the next call."""
        if self._numpy_irfft:
            if self._gufuncs is not None:
                y: Real = self._gufuncs[1](spec, self._scale, out=self._time)
                return y
            y = np.fft.irfft(spec, self.n, axis=-1, out=self._time)  # type: ignore[arg-type]
            return y
        if self._fftw is not None:
            backward = self._fftw[1]
            # COPY: the spectrum must survive (c2r destroys its input).
            backward.input_array[...] = spec
            y = backward()  # normalised by 1 / n, as irfft is
            return y
        y = sp_fft.irfft(spec, self.n, axis=-1, workers=self.workers)
        return y


def _check_taps(taps: Taps, channels: int) -> Taps:
    taps = np.asarray(taps, dtype=np.float64)
    if taps.ndim != 2 or taps.shape[1] < 1 or taps.shape[0] not in (1, channels):
        raise ValueError(
            f"taps must have shape (1, M) or ({channels}, M) with M >= 1, got {taps.shape}"
        )
    return taps


class OverlapSaveConvolver:
    """Single-FFT overlap-save over a batch: one FFT pair of length N per chunk of <= L frames.

    Parameters
    ----------
    taps : ndarray of float64, shape (1, M) or (channels, M)
        One shared filter, or one per channel (broadcast over streams).
    plan : Plan
        An ``overlap-save`` plan (`choose_plan`): N = ``plan.nfft``.
    streams, channels : int
        Batch shape; inputs are (streams, channels, frames).
    precision : {"float64", "float32"}, optional
        What the FFTs compute in. Default float64.
    workers : int, optional
        Threads for scipy.fft where they pay. Default 1.

    Notes
    -----
    Output frame n is sum_k h[k] x[n - k] over the whole stream (x = 0 before
    the start), whatever the chunking: each chunk of n <= L frames is
    transformed as [last M - 1 inputs | chunk | zeros], and the circular
    convolution equals the linear one at [M - 1, M - 1 + n).
    """

    def __init__(
        self,
        taps: Taps,
        plan: Plan,
        streams: int,
        channels: int,
        *,
        precision: Precision = "float64",
        workers: int = 1,
        fft_library: FftLibrary = "auto",
    ) -> None:
        taps = _check_taps(taps, channels)
        if plan.algorithm != "overlap-save":
            raise ValueError(f"plan is {plan.algorithm!r}, not 'overlap-save'")
        real, cplx = _dtypes(precision)
        self.plan = plan
        self.numtaps: int = taps.shape[1]
        self.nfft: int = plan.nfft
        self.fft_block: int = self.nfft - self.numtaps + 1
        if self.fft_block < 1:
            raise ValueError(f"nfft {self.nfft} is shorter than the {self.numtaps} taps")
        self._fft = _Fft(self.nfft, (streams, channels), real, cplx, workers, fft_library)
        # H is shared read-only; rows broadcast over streams (and channels if shared).
        spectrum = np.asarray(sp_fft.rfft(taps, self.nfft, axis=-1), dtype=cplx)[np.newaxis]
        spectrum.setflags(write=False)
        self._spectrum = spectrum
        # The last M - 1 input samples per row (zeros at the start).
        self._history: Real = np.zeros((streams, channels, self.numtaps - 1), dtype=real)
        # [history (M - 1) | chunk (n) | zeros], rebuilt for every chunk.
        self._work: Real = np.zeros((streams, channels, self.nfft), dtype=real)

    def process(self, x: Real, out: Real) -> None:
        """Filter ``x`` (streams, channels, frames) into ``out`` (same shape, any float)."""
        frames = x.shape[-1]
        m1 = self.numtaps - 1
        work, history, spectrum, fft = self._work, self._history, self._spectrum, self._fft
        for start in range(0, frames, self.fft_block):
            n = min(self.fft_block, frames - start)
            # COPY: history into the workspace; it lives apart so the workspace stays scratch.
            work[..., :m1] = history
            # COPY: the chunk into the workspace, cast to the compute type.
            work[..., m1 : m1 + n] = x[..., start : start + n]
            # The valid outputs never read the tail, but FFT rounding mixes it into
            # all of them: a stale non-finite sample left there by a longer chunk
            # would poison every later chunk, so it is cleared each time.
            work[..., m1 + n :] = 0.0
            # COPY: overlap for the next chunk, the last M - 1 samples of [history | chunk].
            history[...] = work[..., n : n + m1]
            spec = fft.rfft(work)
            np.multiply(spec, spectrum, out=spec)
            conv = fft.irfft(spec)
            # COPY: the valid part of the transform's result, cast, into the output.
            out[..., start : start + n] = conv[..., m1 : m1 + n]

    def reset(self) -> None:
        """Forget the input history, as if just built."""
        self._history.fill(0.0)


class _TailLevel:
    """State of one level k >= 1 (or the head's partitions 1..N-1): delay line, spectra.

    ``transforms``: whether the level makes its own FFTs (`chunk`); the head's partitions
    1..N-1 only hold spectra the head transformed and meet them in a MAC.
    """

    def __init__(
        self,
        level: Level,
        taps: Taps,
        streams: int,
        channels: int,
        real: RealType,
        cplx: ComplexType,
        workers: int,
        library: FftLibrary,
        compiled: Any,
        *,
        transforms: bool,
    ) -> None:
        self.size = size = level.size
        self.count = level.count
        spectra = _partition_spectra(taps, level, cplx)
        self.spectra = _doubled(spectra)
        self.fdl: Complex = np.zeros((level.count, streams, channels, size + 1), cplx)
        self.acc: Complex = np.zeros((streams, channels, size + 1), cplx)
        self.slot = 0
        self._compiled = compiled
        shape = (streams, channels)
        if compiled is None:
            # numpy's MAC multiplies into scratch, then reduces.
            self._scratch: Complex = np.zeros_like(self.fdl)
        if not transforms:
            return
        if compiled is None:
            self._fft = _Fft(2 * size, shape, real, cplx, workers, library)
            return
        # `convolution_jit.level_chunk`'s window copy, spectrum and transform buffers, and
        # the threads its transforms get (FFTW's, or DUCC0's when FFTW is not used).
        self._window: Real = np.zeros((*shape, 2 * size), real)
        self._spec: Complex = np.zeros((*shape, size + 1), cplx)
        self._time: Real = np.zeros((*shape, 2 * size), real)
        threads = _workers_for(2 * size, streams * channels, workers)
        self._fftw_plans = compiled.FftwPlans(
            self._window, self._spec, self.acc, self._time,
            enabled=_compiled_fftw(library, streams * channels), threads=threads,
        )  # fmt: skip
        self.threads = self._fftw_plans.threads if self._fftw_plans.addresses[1] else threads

    def mac(self) -> None:
        """acc = the delay line's multiply-accumulate with the newest spectrum at ``slot``."""
        _mac(self.spectra, self.fdl, self._scratch, self.acc, self.slot)

    def chunk(self, ring: Real, start: int, tail: Real, t: int) -> None:
        """A boundary: push the spectrum of ring[..., start : start + 2Q], add the output.

        The level's output chunk (the last Q samples of irfft(MAC)) is added into
        tail[..., t : t + Q].
        """
        size, slot = self.size, self.slot
        if self._compiled is not None:
            self._compiled.level_chunk(
                ring, start, self._window, self._spec, self.fdl, self.spectra, self.acc, slot,
                self._time, tail, t, self._fftw_plans.addresses, self.threads,
            )  # fmt: skip
        else:
            self._fft.rfft(ring[..., start : start + 2 * size], out=self.fdl[slot])
            self.mac()
            conv = self._fft.irfft(self.acc)
            chunk = tail[..., t : t + size]
            np.add(chunk, conv[..., size:], out=chunk)
        self.slot = (slot + 1) % self.count


def _partition_spectra(taps: Taps, level: Level, cplx: ComplexType) -> Complex:
    """Spectra (count, rows, P + 1) of taps [offset + j P, offset + (j + 1) P), padded to 2P."""
    size, count, offset = level.size, level.count, level.offset
    padded = np.zeros((taps.shape[0], count * size))
    part = taps[:, offset : offset + count * size]
    padded[:, : part.shape[1]] = part
    pieces = padded.reshape(taps.shape[0], count, size).transpose(1, 0, 2)
    return np.asarray(sp_fft.rfft(pieces, 2 * size, axis=-1), dtype=cplx)


def _doubled(spectra: Complex) -> Complex:
    """Partition spectra laid out so a delay-line MAC is one contiguous slice.

    For a ring of N slots whose newest spectrum sits at slot w, slot i holds the
    input of age (w - i) mod N and must meet H_{(w - i) mod N}. With
    G[m] = H_{(N - 1 - m) mod N} for m in [0, 2N - 1), the slice
    G[N - 1 - w : 2N - 1 - w] puts exactly H_{(w - i) mod N} at position i
    (G[N - 1 - w + i] = H_{(w - i) mod N}), so the delay line is never rotated
    or copied. Returned with a broadcast axis for streams: (2N - 1, 1, rows, bins).
    """
    n = spectra.shape[0]
    index = (n - 1 - np.arange(2 * n - 1)) % n
    doubled = np.ascontiguousarray(spectra[index][:, np.newaxis])
    doubled.setflags(write=False)
    return doubled


def _mac(spectra: Complex, fdl: Complex, scratch: Complex, acc: Complex, slot: int) -> None:
    """acc = sum_i spectra_window[i] * fdl[i], the delay-line multiply-accumulate."""
    n = fdl.shape[0]
    window = spectra[n - 1 - slot : 2 * n - 1 - slot]
    if n == 1:
        np.multiply(window[0], fdl[0], out=acc)
        return
    # Measured against np.einsum("n...,n...->...") (1.5-2x slower), np.vecdot and
    # np.matmul over a bins-major delay line (1.2-3x slower) and a per-partition loop
    # (slower beyond 3 partitions): one multiply into scratch, then one reduction.
    np.multiply(window, fdl, out=scratch)
    np.add.reduce(scratch, axis=0, out=acc)  # np.sum's wrapper costs ~1 us more


class PartitionedConvolver:
    """Zero-latency (non-)uniformly partitioned overlap-save over a batch of streams.

    Parameters
    ----------
    taps : ndarray of float64, shape (1, M) or (channels, M)
        One shared filter, or one per channel (broadcast over streams).
    plan : Plan
        A ``partitioned`` (one level) or ``nonuniform`` plan from `choose_plan`.
    streams, channels : int
        Batch shape; inputs are (streams, channels, frames).
    precision : {"float64", "float32"}, optional
        What the FFTs, spectra and delay lines compute in. Default float64.
    workers : int, optional
        Threads for scipy.fft where they pay. Default 1.
    fft_library : {"auto", "scipy", "pyfftw"}, optional
        Who computes the transforms numpy does not take (see `_Fft`). Default auto.
    kernel : {"auto", "numba", "numpy"}, optional
        Who runs the per-block head path: numba-compiled code
        (`streamer.stages.convolution_jit`, ~2x faster at 256-frame blocks) or
        numpy calls. auto takes numba when it is installed. Default auto.

    Raises
    ------
    BackendUnavailableError
        ``kernel = "numba"`` or ``fft_library = "pyfftw"`` and it is not installed.

    Notes
    -----
    Output frame n is y[n] = sum_k h[k] x[n - k] over the whole stream, with no
    delay, for any chunking of the input. Partitions are fixed to absolute
    stream positions: input partition t of a level of size P is
    x[tP, (t + 1)P), and its spectrum X_t = rfft(x[(t - 1)P, (t + 1)P)).

    *Why a level of size P only needs inputs it already has.* The taps
    [o + jP, o + (j + 1)P) of a level (offset o = dP) add to the outputs
    y[TP + q], q in [0, P), the values sum_m h[o + jP + m] x[TP + q - o - jP - m],
    which are output P + q of the 2P-point circular convolution of those taps
    with the segment x[(t - 1)P, (t + 1)P), t = T - d - j (indices P + q - m lie
    in [1, 2P): no wrap-around). So the output chunk T of the level is the last
    P samples of irfft(sum_j H_j X_{T-d-j}), which needs inputs up to
    (T - d + 1)P - 1. With d >= 1 that is at most TP - 1: the chunk can be
    computed the moment the input reaches TP, before any of its outputs are due.

    *The head level* (offset 0, d = 0) would need the input partition T itself.
    Its partitions j >= 1 (d >= 1 in effect) are summed into A_T = sum_{j>=1}
    H_j X_{T-j} at each head boundary. Partition 0 is applied to the live input:
    when the stream holds r of the P frames of partition T, the segment
    [x_{T-1} | first r frames of x_T | zeros] is transformed, and the outputs
    P + q, q < r, of irfft(H_0 X + A_T) are exact, because a causal filter's
    output q depends on no input after q: the zeros only stand for inputs whose
    outputs are not emitted yet. When the partition completes, the same
    transform with all P frames is X_T, pushed into the delay line. A block that
    fills partitions exactly costs one FFT pair of 2P; a partial one costs the
    same and is repeated by the next call over the same partition.

    *Levels k >= 1* start at their own size (o_k = P_k, d = 1): the head covers
    [0, P_1), level k covers [P_k, P_{k+1}) with P_{k+1} / P_k - 1 partitions,
    the last level the rest. Their output chunks are added into a time-domain
    ring of max P_k samples per row, which the head reads (and clears) as it
    emits; each chunk starts at a multiple of its own size, so none wraps.
    The work of a level of size Q falls on the block that completes each Q
    frames (no background thread), which is what makes p99 exceed the median.

    The input is kept in a mirrored ring of R = 2 max P_k frames per row, so
    that every window is one contiguous slice, with no copy. A window of a
    level of size Q starts at a multiple of Q and spans 2Q frames, so it runs
    past R only when it starts at R - Q, and then reads R + [0, Q): only the
    samples at i < max P_k need a second copy at i + R.
    """

    def __init__(
        self,
        taps: Taps,
        plan: Plan,
        streams: int,
        channels: int,
        *,
        precision: Precision = "float64",
        workers: int = 1,
        fft_library: FftLibrary = "auto",
        kernel: Kernel = "auto",
    ) -> None:
        taps = _check_taps(taps, channels)
        if plan.algorithm not in ("partitioned", "nonuniform") or not plan.levels:
            raise ValueError(f"plan is {plan.algorithm!r}, not a partitioned one")
        _check_levels(plan.levels, taps.shape[1])
        real, cplx = _dtypes(precision)
        self.plan = plan
        self.numtaps: int = taps.shape[1]
        head = plan.levels[0]
        p0 = head.size
        self._p0 = p0
        compiled = _compiled(kernel)
        self.kernel: Literal["numba", "numpy"] = "numpy" if compiled is None else "numba"
        head_spectra = _partition_spectra(taps, head, cplx)
        h0 = np.ascontiguousarray(head_spectra[0][np.newaxis])
        h0.setflags(write=False)
        self._h0: Complex = h0
        # The head's partitions 1..N-1 on a delay line of N - 1 slots (see Notes).
        self._head_tail: _TailLevel | None = None
        if head.count > 1:
            tail = _TailLevel(
                Level(p0, head.count - 1, p0), taps, streams, channels, real, cplx, workers,
                fft_library, compiled, transforms=False,
            )
            self._head_tail = tail
        self._levels = [
            _TailLevel(
                level, taps, streams, channels, real, cplx, workers, fft_library, compiled,
                transforms=True,
            )
            for level in plan.levels[1:]
        ]
        largest = max(level.size for level in plan.levels)
        self._ring_len = 2 * largest
        self._ring: Real = np.zeros((streams, channels, 2 * self._ring_len), real)
        self._scratch: Real = np.zeros((streams, channels, 2 * p0), real)
        self._tail_len = max((level.size for level in plan.levels[1:]), default=p0)
        self._tail: Real = np.zeros((streams, channels, self._tail_len), real)
        self._pos = 0
        self._compiled = compiled
        if compiled is None:
            self._head_fft = _Fft(2 * p0, (streams, channels), real, cplx, workers, fft_library)
            # The head's working spectrum when X_T itself must stay in the delay line.
            self._head_spec: Complex = np.zeros((streams, channels, p0 + 1), cplx)
        else:
            bins = p0 + 1
            # The compiled head's spectrum, product and transform buffers, and a stand-in
            # delay line of no partitions when the head has one.
            self._spec_buf: Complex = np.zeros((streams, channels, bins), cplx)
            self._work: Complex = np.zeros((streams, channels, bins), cplx)
            self._conv: Real = np.zeros((streams, channels, 2 * p0), real)
            self._fftw_plans = compiled.FftwPlans(
                self._scratch, self._spec_buf, self._work, self._conv,
                enabled=_compiled_fftw(fft_library, streams * channels),
            )  # fmt: skip
            self._fftw = self._fftw_plans.addresses  # read on every block
            if self._head_tail is None:
                self._no_fdl: Complex = np.zeros((0, streams, channels, bins), cplx)
                self._no_spectra: Complex = np.zeros((1, 1, 1, bins), cplx)
                self._no_acc: Complex = np.zeros((streams, channels, bins), cplx)
            # Compile (or load from the cache) the service's signature now, not in the
            # first block: float32 blocks in and out.
            empty = np.zeros((streams, channels, 0), np.float32)
            self._process_compiled(empty, empty)
        # The same for the levels, not at their first boundary in the middle of a stream
        # (the compiled chunk took ~7 ms to load there, seconds to compile; a first FFT of
        # a size plans it): one chunk of each on the zeroed state, which `reset` clears.
        for level in self._levels:
            level.chunk(self._ring, 0, self._tail, 0)
        self.reset()

    def process(self, x: Real, out: Real) -> None:
        """Filter ``x`` (streams, channels, frames) into ``out`` (same shape, any float)."""
        if self._compiled is not None:
            self._process_compiled(x, out)
            return
        frames = x.shape[-1]
        p0, ring, ring_len, scratch = self._p0, self._ring, self._ring_len, self._scratch
        mirror_len = ring_len // 2
        fft, h0, head_tail = self._head_fft, self._h0, self._head_tail
        head_spec = self._head_spec
        has_tail = bool(self._levels)
        i = 0
        while i < frames:
            pos = self._pos
            r = pos % p0
            take = min(p0 - r, frames - i)
            end = r + take
            w = pos % ring_len
            seg = x[..., i : i + take]
            # COPY: the input into the ring, cast to the compute type, and into its
            # mirror where a window may read it (see Notes). A partition never straddles
            # the ring's end or the mirror's: both are multiples of P0.
            ring[..., w : w + take] = seg
            if w < mirror_len:
                ring[..., w + ring_len : w + ring_len + take] = seg
            start = (pos - r - p0) % ring_len  # x_{T-1} starts here
            if end == p0 and head_tail is not None:
                # X_T goes straight into the delay line; the product into a work buffer.
                x_t = fft.rfft(ring[..., start : start + 2 * p0], out=head_tail.fdl[head_tail.slot])
                spec = np.multiply(x_t, h0, out=head_spec)
                np.add(spec, head_tail.acc, out=spec)
            else:
                if end == p0:
                    spec = fft.rfft(ring[..., start : start + 2 * p0])
                else:
                    # COPY: [x_{T-1} | r frames of x_T] and zeros for the frames not yet
                    # here; they stand for inputs whose outputs are not emitted yet.
                    scratch[..., : p0 + end] = ring[..., start : start + p0 + end]
                    scratch[..., p0 + end :] = 0.0
                    spec = fft.rfft(scratch)
                np.multiply(spec, h0, out=spec)
                if head_tail is not None:
                    np.add(spec, head_tail.acc, out=spec)
            conv = fft.irfft(spec)
            valid = conv[..., p0 + r : p0 + end]
            dest = out[..., i : i + take]
            if has_tail:
                t = pos % self._tail_len
                later = self._tail[..., t : t + take]
                np.add(valid, later, out=dest, casting="same_kind")
                later.fill(0.0)  # read once; a fill (not a subtraction) also clears NaN
            else:
                # COPY: the valid part of the transform's result, cast, into the output.
                dest[...] = valid
            self._pos = pos + take
            i += take
            if end == p0:
                if head_tail is not None:  # A_{T+1} for the next partition
                    head_tail.mac()
                    head_tail.slot = (head_tail.slot + 1) % head_tail.count
                self._level_chunks()

    def _process_compiled(self, x: Real, out: Real) -> None:
        """`process` with the head path in `convolution_jit.head_run`, the levels here."""
        frames = x.shape[-1]
        head_tail = self._head_tail
        if head_tail is None:
            fdl, spectra, acc, slot = self._no_fdl, self._no_spectra, self._no_acc, 0
        else:
            fdl, spectra, acc = head_tail.fdl, head_tail.spectra, head_tail.acc
            slot = head_tail.slot
        first_level = self._levels[0].size if self._levels else 0
        run = self._compiled.head_run
        i = 0
        while True:
            before = self._pos
            i, pos, slot = run(
                x, out, i, before, slot, self._p0, self._ring, self._scratch, self._spec_buf,
                self._work, self._conv, self._h0, fdl, spectra, acc, self._tail, first_level,
                self._fftw,
            )  # fmt: skip
            self._pos = pos
            if head_tail is not None:
                head_tail.slot = slot
            if first_level and pos != before and pos % first_level == 0:
                self._level_chunks()
            if i >= frames:
                return

    def _level_chunks(self) -> None:
        """A head partition just completed: compute the level chunks due now."""
        pos = self._pos
        ring, ring_len = self._ring, self._ring_len
        for level in self._levels:
            size = level.size
            if pos % size:
                break  # each size divides the next: no larger level is due either
            level.chunk(ring, (pos - 2 * size) % ring_len, self._tail, pos % self._tail_len)

    def reset(self) -> None:
        """Forget all input, as if just built."""
        self._pos = 0
        self._ring.fill(0.0)
        self._tail.fill(0.0)
        for level in [*self._levels, *([self._head_tail] if self._head_tail else [])]:
            level.fdl.fill(0.0)
            level.acc.fill(0.0)
            level.slot = 0


def _check_levels(levels: tuple[Level, ...], numtaps: int) -> None:
    """Refuse a level layout the derivation in `PartitionedConvolver` does not cover."""
    head = levels[0]
    if head.offset != 0 or head.size < 1 or head.count < 1:
        raise ValueError(f"head level must start at tap 0 with >= 1 partition, got {head}")
    covered = head.count * head.size
    for level in levels[1:]:
        if level.size % head.size or level.size < levels[0].size:
            raise ValueError(f"level size {level.size} is not a multiple of {head.size}")
        if level.offset != covered or level.offset != level.size or level.count < 1:
            raise ValueError(
                f"level {level} must start where the previous ends ({covered}) "
                f"at its own size, with >= 1 partition"
            )
        covered += level.count * level.size
    sizes = [level.size for level in levels]
    if sizes != sorted(sizes) or any(b % a for a, b in itertools.pairwise(sizes)):
        raise ValueError(f"level sizes {sizes} must grow, each dividing the next")
    if covered < numtaps:
        raise ValueError(f"levels cover {covered} taps, the filter has {numtaps}")


def make_convolver(
    taps: Taps,
    *,
    streams: int = 1,
    channels: int | None = None,
    block: int = 256,
    algorithm: Algorithm | Literal["auto"] = "auto",
    precision: Precision = "float64",
    workers: int = 1,
    fft_library: FftLibrary = "auto",
    kernel: Kernel = "auto",
    backend: Literal["numpy", "torch"] = "numpy",
    device: str = "cpu",
) -> Convolver:
    """Build the streaming convolver the cost model (or ``algorithm``) picks.

    Parameters
    ----------
    taps : ndarray of float64, shape (M,), (1, M) or (channels, M)
        One shared filter, or one per channel, broadcast over streams.
    streams : int, optional
        Streams filtered together in one call. Default 1.
    channels : int, optional
        Channels per stream; default: the rows of ``taps``.
    block : int, optional
        Typical block length, frames; any block length works. Default 256.
    algorithm : {"auto", "overlap-save", "partitioned", "nonuniform"}, optional
        Default ``"auto"``: `choose_plan` decides.
    precision : {"float64", "float32"}, optional
        Compute type. Default float64 (see docs/fir.md for the error of float32).
    workers : int, optional
        scipy.fft threads, used for batched transforms where they pay. Default 1.
    fft_library : {"auto", "scipy", "pyfftw"}, optional
        Who computes the transforms numpy does not: auto takes pyFFTW if it is
        installed, else scipy.fft. Default auto.
    kernel : {"auto", "numba", "numpy"}, optional
        The partitioned algorithms' per-block path: compiled by numba (auto, when
        installed) or numpy calls. Default auto.
    backend : {"numpy", "torch"}, optional
        torch: `streamer.stages.convolution_torch.TorchPartitionedConvolver`, the
        partitioned algorithm (``algorithm`` must be "auto" or "partitioned").
    device : {"cpu", "cuda"}, optional
        The torch backend's device. Default the CPU.

    Returns
    -------
    OverlapSaveConvolver, PartitionedConvolver or TorchPartitionedConvolver
        Its ``process(x, out)`` filters x of shape (streams, channels, frames),
        any float dtype, into ``out`` of the same shape; outputs equal
        ``scipy.signal.lfilter(h, 1, x)`` of each row's whole stream.

    Examples
    --------
    >>> import numpy as np
    >>> conv = make_convolver(np.ones(3) / 3, streams=2, channels=1, block=4)
    >>> x = np.ones((2, 1, 4), np.float32)
    >>> y = np.empty_like(x)
    >>> conv.process(x, y)
    >>> y[0, 0].round(3).tolist()
    [0.333, 0.667, 1.0, 1.0]
    """
    taps2 = np.atleast_2d(np.asarray(taps, dtype=np.float64))
    channels = taps2.shape[0] if channels is None else channels
    if backend == "torch":
        # Imported here: torch takes a second or two to load, which numpy users never pay.
        from streamer.stages.convolution_torch import TorchPartitionedConvolver, torch_device

        if algorithm not in ("auto", "partitioned"):
            raise ValueError(f"the torch backend runs the partitioned algorithm, not {algorithm}")
        plan = choose_plan(taps2.shape[1], block, streams * channels, "partitioned")
        return TorchPartitionedConvolver(
            taps2, plan, streams, channels, precision=precision, device=torch_device(device)
        )
    head, fftw = _transform_paths(kernel, fft_library, precision)
    plan = choose_plan(taps2.shape[1], block, streams * channels, algorithm, head, fftw)
    if plan.algorithm == "overlap-save":
        return OverlapSaveConvolver(
            taps2, plan, streams, channels, precision=precision, workers=workers,
            fft_library=fft_library,
        )
    return PartitionedConvolver(
        taps2, plan, streams, channels, precision=precision, workers=workers,
        fft_library=fft_library, kernel=kernel,
    )
