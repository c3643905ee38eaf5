"""The FIR stage: one linear filter applied to a stream by (partitioned) FFT convolution."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import scipy.signal as sp_signal

from streamer.block import Block, StreamLayout
from streamer.config import FirConfig
from streamer.errors import BackendUnavailableError, ConfigError, InputFileError
from streamer.stages.convolution import Algorithm, Convolver, Plan, fft_size_for, make_convolver

if TYPE_CHECKING:
    import torch

    from streamer.stages.convolution_torch import TorchPartitionedConvolver

__all__ = ["FirStage", "design_taps", "fft_size_for", "load_taps"]

Taps = npt.NDArray[np.float64]

# Relative tolerance (of the peak |tap|) under which taps count as (anti)symmetric.
_LINEAR_PHASE_RTOL = 1e-9


def _hz(value: float) -> str:
    """A frequency without a trailing ``.0`` (``30000``, ``7999.5``)."""
    return f"{value:.10g}"


def design_taps(cfg: FirConfig, layout: StreamLayout, *, index: int = 0) -> Taps:
    """Design or load the taps a `FirConfig` asks for.

    Parameters
    ----------
    cfg : FirConfig
        A firwin design (``design``, ``cutoff_hz``, ``numtaps``, ``window``) or
        a ``taps_file``.
    layout : StreamLayout
        The stream the filter is for: its rate (Hz) sets Nyquist, its channel
        count the allowed rows of a taps file.
    index : int, optional
        Position of the stage in ``stages``, for error key paths. Default 0.

    Returns
    -------
    ndarray of float64, shape (1, numtaps) or (channels, numtaps)
        One shared filter, or one filter per channel.

    Raises
    ------
    ConfigError
        A cutoff at or above Nyquist, an unknown window, an even ``numtaps``
        for a highpass or bandstop, or another design firwin refuses; ``key``
        is ``stages[index].<field>``.
    InputFileError
        ``taps_file`` cannot be used (see `load_taps`).
    """
    if cfg.taps_file is not None:
        return load_taps(cfg.taps_file, layout.channels, rate=layout.rate)

    key = f"stages[{index}]"
    nyquist = layout.rate / 2
    cutoffs = cfg.cutoff_hz if isinstance(cfg.cutoff_hz, tuple) else (cfg.cutoff_hz,)
    for cutoff in cutoffs:
        if cutoff >= nyquist:
            raise ConfigError(
                f"cutoff {_hz(cutoff)} Hz must be below Nyquist "
                f"({_hz(nyquist)} Hz at {layout.rate} Hz)",
                key=f"{key}.cutoff_hz",
            )
    # FirConfig already refuses this; repeated here because firwin's own message
    # ("zero response at the Nyquist frequency") does not say what to change.
    if cfg.design in ("highpass", "bandstop") and cfg.numtaps % 2 == 0:
        raise ConfigError(
            f"a {cfg.design} needs an odd numtaps, got {cfg.numtaps}", key=f"{key}.numtaps"
        )
    try:
        sp_signal.get_window(cfg.window, cfg.numtaps, fftbins=False)
    except ValueError as exc:
        raise ConfigError(
            f"window {cfg.window!r} is not a window firwin can use ({exc})",
            key=f"{key}.window",
        ) from exc
    try:
        taps = sp_signal.firwin(
            cfg.numtaps, cutoffs, pass_zero=cfg.design, window=cfg.window, fs=layout.rate
        )
    except ValueError as exc:  # only reachable with an unvalidated config (model_construct)
        raise ConfigError(f"firwin refused the design: {exc}", key=key) from exc
    return np.asarray(taps, dtype=np.float64).reshape(1, -1)


def load_taps(path: Path, channels: int, *, rate: int | None = None) -> Taps:
    """Read FIR taps from a file.

    Parameters
    ----------
    path : Path
        ``.npy`` (1-D, or 2-D with one row per channel), ``.txt``/``.csv``
        (numbers separated by whitespace or commas respectively; one line or
        one column for a shared filter, one row per channel), or an audio file
        soundfile can read (``.wav``, ``.flac``, ``.ogg``, ...) holding an
        impulse response: mono for a shared filter, one channel per channel.
    channels : int
        Channel count of the stream; a file may hold 1 or ``channels`` filters.
    rate : int, optional
        Sample rate of the stream, Hz. When given, an audio impulse response
        recorded at another rate is refused.

    Returns
    -------
    ndarray of float64, shape (1, numtaps) or (channels, numtaps)

    Raises
    ------
    InputFileError
        The file is missing or unreadable, holds no taps, non-finite taps,
        more than 2 dimensions, or a filter count other than 1 or ``channels``.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file")
    if not path.is_file():
        raise InputFileError(path, "not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        raw = _read_npy(path)
        what = "rows"
    elif suffix in (".txt", ".csv"):
        raw = _read_text(path, delimiter="," if suffix == ".csv" else None)
        what = "rows"
    else:
        raw = _read_audio(path, rate)
        what = "channels"

    if raw.ndim > 2:
        raise InputFileError(
            path, f"taps must be 1-D or 2-D (one row per channel), got shape {raw.shape}"
        )
    taps = np.atleast_2d(raw)  # 0-D (a single number in a text file) and 1-D -> one row
    if taps.size == 0:
        raise InputFileError(path, f"holds no taps (shape {raw.shape})")
    rows = taps.shape[0]
    if rows not in (1, channels):
        raise InputFileError(
            path,
            f"taps have {rows} {what}; expected 1 (shared) or {channels} (one per channel)",
        )
    bad = np.argwhere(~np.isfinite(taps))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise InputFileError(
            path, f"taps must be finite, found {taps[row, col]} at row {row}, tap {col}"
        )
    return np.ascontiguousarray(taps, dtype=np.float64)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _as_real(path: Path, arr: npt.NDArray[Any]) -> Taps:
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputFileError(path, f"taps must be real numbers, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


def _read_npy(path: Path) -> Taps:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputFileError(path, f"cannot read as .npy: {_one_line(exc)}") from exc
    if not isinstance(arr, np.ndarray):  # np.load also opens .npz archives
        raise InputFileError(path, "is an .npz archive, not a single .npy array")
    return _as_real(path, arr)


def _read_text(path: Path, delimiter: str | None) -> Taps:
    try:
        with warnings.catch_warnings():
            # An empty file warns and returns an empty array; refused below as "no taps".
            warnings.simplefilter("ignore", UserWarning)
            arr = np.loadtxt(path, dtype=np.float64, delimiter=delimiter)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputFileError(path, f"cannot read as numbers: {_one_line(exc)}") from exc
    return np.asarray(arr, dtype=np.float64)


def _read_audio(path: Path, rate: int | None) -> Taps:
    import soundfile  # only taps given as impulse responses need it

    try:
        data, file_rate = soundfile.read(path, dtype="float64", always_2d=True)
    except (soundfile.SoundFileError, OSError, ValueError, TypeError) as exc:
        raise InputFileError(
            path,
            f"cannot read as an audio file ({_one_line(exc)}); "
            "taps files are .npy, .txt, .csv or audio (.wav, .flac, .ogg)",
        ) from exc
    if rate is not None and file_rate != rate:
        raise InputFileError(
            path, f"impulse response is sampled at {file_rate} Hz, the stream at {rate} Hz"
        )
    # soundfile gives (frames, channels); taps are one row per channel.
    return np.asarray(data, dtype=np.float64).T


def _latency(taps: Taps) -> int:
    """Group delay for linear-phase taps, else the index of the peak |tap|."""
    numtaps: int = taps.shape[1]
    peak = float(np.max(np.abs(taps)))
    tol = _LINEAR_PHASE_RTOL * peak
    flipped = taps[:, ::-1]
    symmetric = float(np.max(np.abs(taps - flipped))) <= tol
    antisymmetric = float(np.max(np.abs(taps + flipped))) <= tol
    if symmetric or antisymmetric:
        return (numtaps - 1) // 2
    # The main arrival: the column of the largest |tap| over all channels.
    return int(np.unravel_index(np.argmax(np.abs(taps)), taps.shape)[1])


class FirStage:
    """An FIR filter applied block by block by FFT convolution, with no added delay.

    Output equals ``scipy.signal.lfilter(taps, 1, x)`` over the whole signal
    (float64 internally unless ``precision = "float32"``, float32 out), whatever
    the block sizes: 0 frames, 1 frame, or more than any FFT length, changing
    from block to block. The kernel is single-FFT overlap-save, uniformly
    partitioned or non-uniformly partitioned overlap-save
    (`streamer.stages.convolution`), chosen by a cost model from the filter
    length, ``block_hint`` and the channel count, or forced by ``cfg.algorithm``.

    Parameters
    ----------
    cfg : FirConfig
        The filter (a firwin design or a taps file), the algorithm, the compute
        precision and the scipy.fft worker count.
    layout : StreamLayout
        Channel count and rate (Hz) of the stream; fixed for the stage's life.
    index : int, optional
        Position of the stage in ``stages``, for error key paths. Default 0.
    block_hint : int, optional
        Typical block length, frames; sets the FFT sizes (`choose_plan`). Any
        block length works. Default 256.

    Attributes
    ----------
    name : str
        ``cfg.name`` or ``"fir"``.
    taps : ndarray of float64, shape (1, numtaps) or (channels, numtaps)
        Read-only. One row is shared by all channels; otherwise row c filters
        channel c.
    plan : Plan
        The algorithm and sizes in use.
    algorithm : {"overlap-save", "partitioned", "nonuniform"}
        ``plan.algorithm``.
    nfft : int
        The longest FFT length used.
    fft_block : int
        New frames per FFT pair of the most frequent transform: the
        overlap-save L = nfft - numtaps + 1, or the head partition length.
    latency : int
        See the ``Latency:`` line.

    Raises
    ------
    ConfigError, InputFileError
        From `design_taps`.

    Latency: (numtaps - 1) // 2 samples for linear-phase taps (symmetric or
    antisymmetric within 1e-9 of the peak |tap|: the group delay, which no
    implementation can remove); otherwise the index of the peak |tap| over all
    channels (the main arrival of an impulse response). The convolution itself
    adds none, whatever the algorithm: each block's output is ready when the
    block is.

    Backends: numpy (every algorithm); torch on the CPU or CUDA (``backend = "torch"``,
    the partitioned algorithm), which takes tensors on its device and hands them on to a
    next stage there (``tensor_device``, ``hands_off_tensors``: `Stage`)
    """

    def __init__(
        self,
        cfg: FirConfig,
        layout: StreamLayout,
        *,
        index: int = 0,
        block_hint: int = 256,
    ) -> None:
        self.name: str = cfg.name or "fir"
        self.layout = layout
        taps = design_taps(cfg, layout, index=index)
        taps.setflags(write=False)
        self.taps: Taps = taps
        self.numtaps: int = taps.shape[1]
        self.latency: int = _latency(taps)
        try:
            self._convolver: Convolver = make_convolver(
                taps,
                streams=1,
                channels=layout.channels,
                block=block_hint,
                algorithm=cfg.algorithm,
                precision=cfg.precision,
                workers=cfg.fft_workers,
                fft_library=cfg.fft_library,
                kernel=cfg.kernel,
                backend=cfg.backend,
                device=cfg.device,
            )
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"stages[{index}]: {exc}") from exc
        self.plan: Plan = self._convolver.plan
        self.algorithm: Algorithm = self.plan.algorithm
        self.nfft: int = self.plan.nfft
        self.fft_block: int = self.plan.fft_block
        # The torch backend's device, where it takes and can give tensors (`Stage`).
        self.tensor_device: torch.device | None = getattr(self._convolver, "device", None)
        self.hands_off_tensors = False

    def process(self, block: Block) -> Block:
        """Filter one block.

        Parameters
        ----------
        block : Block
            ``samples`` of shape (channels, frames), float32; any ``frames``.

        Returns
        -------
        Block
            The same metadata with new float32 C-contiguous samples of shape
            (channels, frames), owned by the caller.

        Raises
        ------
        BlockLayoutError
            The block's channel count or rate differs from the stage's layout.

        Notes
        -----
        Samples are not checked for NaN or infinity (that policy belongs to the
        pipeline). A non-finite input sample makes the outputs whose FFT window
        holds it non-finite (all outputs of its block included), and leaves the
        state once it has left every window and delay line: after numtaps - 1
        later samples for overlap-save, after at most numtaps + nfft for the
        partitioned algorithms (a level of partition Q spans taps up to
        numtaps + Q - 1 and its windows reach back 2Q frames, 2Q <= nfft).
        """
        self.layout.check(block, "fir", self.name)
        x = block.samples
        if self.tensor_device is not None:
            return block.with_samples(self._process_on_device(x))
        # New on every call, by contract: the result is handed to other threads.
        out = np.empty(x.shape, dtype=np.float32)
        self._convolver.process(x[np.newaxis], out[np.newaxis])
        return block.with_samples(out)

    def _process_on_device(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The torch backend's block: ``x`` numpy or already a tensor on the device; the
        result a float32 tensor there when handed off, else new numpy memory."""
        y = cast("TorchPartitionedConvolver", self._convolver).process_block(x)
        if self.hands_off_tensors:
            # A tensor where the block's type says numpy: only the next stage, on the
            # same device, sees it (`link_tensor_hand_offs`).
            return cast("npt.NDArray[np.float32]", y)
        host: npt.NDArray[np.float32] = y.cpu().numpy()
        return host

    def reset(self) -> None:
        """Forget the input history, as if just built."""
        self._convolver.reset()
