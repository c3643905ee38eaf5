"""The resample stage: a rational sample-rate change by a streamed polyphase FIR."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.signal as sp_signal

from streamer.block import Block, StreamLayout
from streamer.config import ResampleConfig
from streamer.errors import ConfigError

__all__ = ["ResampleStage", "resample_taps"]

F64 = npt.NDArray[np.float64]
Index = npt.NDArray[np.intp]

# up and down beyond this make filters of 2 * half_taps * max(up, down) + 1 taps: a
# rate pair like 44100 -> 48000 (160/147) is fine, 48000 -> 47999 is not.
_MAX_FACTOR = 4096

# Products (output samples x filter phase length x channels) one chunk of input may
# need: the gather workspace is this many float64 (8 MiB) at most; a longer block is
# cut into chunks so that no buffer grows with the block. Chunks are at least
# _MIN_CHUNK input frames (where that fits), so that a small block_hint does not make
# a long block a long Python loop.
_CHUNK_PRODUCTS = 1 << 20
_MIN_CHUNK = 256


def resample_taps(
    up: int, down: int, *, half_taps: int = 10, window: str | tuple[str, float] = ("kaiser", 5.0)
) -> F64:
    """The anti-aliasing filter of `scipy.signal.resample_poly`, at the upsampled rate.

    Parameters
    ----------
    up, down : int
        The rate ratio in lowest terms (output rate / input rate = up / down).
    half_taps : int, optional
        Half-length per ``max(up, down)``; resample_poly's is 10. Default 10.
    window : str or (str, float), optional
        The firwin window. Default ``("kaiser", 5.0)``, resample_poly's.

    Returns
    -------
    ndarray of float64, shape (2 * half_taps * max(up, down) + 1,)
        Cutoff at the lower of the two Nyquist rates (``1 / max(up, down)`` of
        the upsampled one), gain ``up`` so that zero-stuffing keeps the level;
        ``[1.0]`` when ``up == down == 1`` (resample_poly returns a copy then).

    Raises
    ------
    ValueError
        From firwin, for a window it cannot make.
    """
    if up == down == 1:
        return np.ones(1)
    max_rate = max(up, down)
    half_len = half_taps * max_rate
    taps: F64 = sp_signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=window) * up
    return taps


class ResampleStage:
    """Changes a stream's rate by ``up / down`` (in lowest terms) with a polyphase FIR.

    Output sample m is ``sum_k h[k] x_up[m * down - k]``, where ``x_up`` is the
    input with ``up - 1`` zeros after each sample: ``scipy.signal.upfirdn(h, x,
    up, down)`` of the whole signal (the causal stream), computed per block from
    the input history, so any split of the stream gives the same samples. Only
    the taps that meet a real sample are computed: output m reads the ``width``
    input samples up to ``i = (m * down) // up`` with phase ``(m * down) % up``
    of the filter. The filter is scipy's `resample_poly` design
    (`resample_taps`); this output is `resample_poly`'s delayed by the filter's
    group delay, which a causal filter cannot avoid.

    Output m is given as soon as input sample i has arrived, so after n input
    samples the stream has given ``ceil(n * up / down)`` outputs (resample_poly's
    length); one block may hold one sample more or less than ``frames * up /
    down``, 0 included. Output blocks carry the new rate, and ``t0`` counts
    samples at that rate.

    Parameters
    ----------
    cfg : ResampleConfig
        ``rate`` (output, Hz), ``window`` and ``half_taps`` of the filter.
    layout : StreamLayout
        Input channels and rate (Hz).
    index : int, optional
        Position of the stage in ``stages``, for error key paths. Default 0.
    block_hint : int, optional
        Typical block length, frames: sizes the workspaces (at least 256 frames'
        worth, at most 8 MiB). Any block length works; a longer one is processed
        in chunks. Default 256.

    Attributes
    ----------
    name : str
        ``cfg.name`` or ``"resample"``.
    layout, out_layout : StreamLayout
        Input and output layouts: the same channels, ``out_layout.rate = cfg.rate``.
    up, down : int
        The ratio in lowest terms.
    taps : ndarray of float64, shape (numtaps,)
        Read-only; the filter at the upsampled rate.
    latency : int
        See the ``Latency:`` line.

    Raises
    ------
    ConfigError
        A window firwin refuses (``stages[index].window``), or a rate ratio whose
        reduced terms exceed 4096 (``stages[index].rate``).

    Latency: the filter's group delay, ``(numtaps - 1) / 2`` samples at the
    upsampled rate, which is ``half_taps * max(up, down) / up`` input samples,
    rounded up: ``half_taps`` when upsampling (10 for 44.1 or 16 kHz to 48 kHz),
    30 for 48 kHz to 16 kHz, 16 for 25.6 kHz to 16 kHz; 0 when the rates are
    equal. In input samples, as every stage declares its latency at its input.

    Backends: numpy
    """

    def __init__(
        self,
        cfg: ResampleConfig,
        layout: StreamLayout,
        *,
        index: int = 0,
        block_hint: int = 256,
    ) -> None:
        self.name: str = cfg.name or "resample"
        self.layout = layout
        self.out_layout = StreamLayout(layout.channels, cfg.rate)
        g = math.gcd(layout.rate, cfg.rate)
        self.up, self.down = cfg.rate // g, layout.rate // g
        up, down = self.up, self.down
        if max(up, down) > _MAX_FACTOR:
            raise ConfigError(
                f"{layout.rate} Hz to {cfg.rate} Hz is a ratio of {up}/{down}: "
                f"both terms must be at most {_MAX_FACTOR} (pick a rate with more in common)",
                key=f"stages[{index}].rate",
            )
        try:
            # Checked even where equal rates need no filter: a bad window is a bad config.
            sp_signal.get_window(cfg.window, 3, fftbins=False)
            taps = resample_taps(up, down, half_taps=cfg.half_taps, window=cfg.window)
        except ValueError as exc:
            raise ConfigError(
                f"window {cfg.window!r} is not a window firwin can use ({exc})",
                key=f"stages[{index}].window",
            ) from exc
        taps.setflags(write=False)
        self.taps: F64 = taps
        # Group delay (numtaps - 1) / 2 at the upsampled rate, in input samples, rounded up.
        self.latency: int = -(-((taps.size - 1) // 2) // up)

        # Polyphase: row p holds h[p], h[p + up], ... reversed and right-aligned, so that
        # the width input samples ending at i (oldest first) dotted with row p give the
        # output whose phase is p.
        width = -(-taps.size // up)
        phases = np.zeros((up, width))
        for p in range(up):
            row = taps[p::up]
            phases[p, width - row.size :] = row[::-1]
        self._width = width
        self._keep = width - 1  # input history the next outputs read

        channels = layout.channels
        outputs_per_input = -(-up // down)
        most = max(1, _CHUNK_PRODUCTS // (channels * width * outputs_per_input))
        self._chunk = max(1, min(max(block_hint, _MIN_CHUNK), most))  # input frames per call
        max_out = -(-self._chunk * up // down) + 1  # outputs one chunk can complete

        # Tables over m in [0, up + max_out): output m reads the inputs ending at
        # (m * down) // up with phase (m * down) % up. Output first + j, first = q * up + r,
        # reads the inputs ending at q * down + last[r + j] with the same phase as r + j,
        # so one slice of each table serves a whole chunk.
        m = np.arange(up + max_out)
        last = (m * down) // up
        self._gather_table: Index = last[:, np.newaxis] - self._keep + np.arange(width)
        self._taps_table: F64 = phases[(m * down) % up]
        self._gather_table.setflags(write=False)
        self._taps_table.setflags(write=False)

        # Input, float64 so that the products add in double precision: [history | chunk],
        # written further on at each chunk and slid back to the front only when full.
        # With room for 2 * keep + chunk the slide never overlaps itself.
        self._buf = np.zeros((channels, 2 * self._keep + self._chunk))
        self._index: Index = np.empty((max_out, width), dtype=np.intp)
        self._gathered = np.empty(channels * max_out * width)
        self._acc = np.empty(channels * max_out)
        self.reset()

    def reset(self) -> None:
        """Forget the input history, as if just built."""
        self._buf[:, : self._keep] = 0.0
        self._head = 0  # column of self._buf holding the oldest history sample
        self._in = 0  # input samples taken so far
        self._out = 0  # output samples given so far

    def process(self, block: Block) -> Block:
        """Resample one block.

        Parameters
        ----------
        block : Block
            ``samples`` of shape (channels, frames), float32, at the input rate;
            any ``frames``, 0 included.

        Returns
        -------
        Block
            New float32 C-contiguous samples of shape (channels, m), owned by the
            caller, at the output rate: ``t0`` is the index of its first output
            sample, ``rate`` the new rate; other metadata unchanged.

        Raises
        ------
        BlockLayoutError
            The block's channel count or rate differs from the stage's input.
        """
        self.layout.check(block, "resample", self.name)
        x = block.samples
        first = self._out
        end = -(-(self._in + block.frames) * self.up // self.down)
        # New on every call, by contract: the result is handed to other threads.
        out = np.empty((block.channels, end - first), dtype=np.float32)
        for start in range(0, block.frames, self._chunk):
            self._process_chunk(x[:, start : start + self._chunk], out[:, self._out - first :])
        return Block(
            out, block.stream, block.seq, first, self.out_layout.rate, block.captured_ns,
            block.annotations,
        )  # fmt: skip

    def _process_chunk(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
        """Take ``x`` (at most one chunk) and write the outputs it completes to ``out``'s start."""
        channels, n = x.shape
        keep, width, up, down = self._keep, self._width, self.up, self.down
        if self._head + keep + n > self._buf.shape[1]:
            # COPY: slide the history to the front (disjoint: head > keep here).
            self._buf[:, :keep] = self._buf[:, self._head : self._head + keep]
            self._head = 0
        at = self._head + keep
        # COPY: the chunk into the workspace, cast to float64.
        self._buf[:, at : at + n] = x
        first = self._out
        count = -(-(self._in + n) * up // down) - first
        if count:
            q, r = divmod(first, up)
            # Column of self._buf of input i is head + keep + i - taken; the table counts
            # inputs from q * down.
            index = self._index[:count]
            np.add(self._gather_table[r : r + count], self._head + keep + q * down - self._in,
                   out=index)  # fmt: skip
            gathered = self._gathered[: channels * count * width].reshape(channels, count, width)
            np.take(self._buf, index, axis=1, out=gathered, mode="clip")
            # One dot product per output, in float64. (einsum straight into the float32
            # output would allocate a casting buffer of ~50 KiB per call.)
            acc = self._acc[: channels * count].reshape(channels, count)
            np.einsum("cjw,jw->cj", gathered, self._taps_table[r : r + count], out=acc)
            out[:, :count] = acc  # COPY: rounded once into the float32 output
        self._head += n
        self._in += n
        self._out += count
