"""The file source: audio (via soundfile) or sensor data (.npy, .csv) read block by block."""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

import numpy as np
import numpy.typing as npt
import soundfile as sf

from streamer.block import Block, StreamLayout
from streamer.config import FileSourceConfig
from streamer.errors import ConfigError, InputFileError
from streamer.sources.base import Pacer

__all__ = ["FileSource"]

F32 = npt.NDArray[np.float32]


class _Reader(Protocol):
    """One open input file, read forward from a position that `rewind` resets."""

    channels: int
    rate: int
    frames: int | None
    metadata: dict[str, Any]
    """What the file says of its stream beyond the samples (docs/wire-format.md, ``meta``)."""

    def read_into(self, out: F32) -> int:
        """Fill ``out[:, :k]`` of ``out`` (channels, n) with the next frames; return k (0: end)."""
        ...

    def rewind(self) -> None: ...

    def close(self) -> None: ...


class _AudioReader:
    """An audio file through soundfile (libsndfile): WAV, FLAC, OGG, AIFF, ..."""

    def __init__(self, path: Path, want_rate: int | None):
        self._path = path
        try:
            self._file = sf.SoundFile(path)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            why = getattr(e, "error_string", None) or str(e)
            raise InputFileError(path, f"not a readable audio file ({why.rstrip('.')})") from e
        self.channels = int(self._file.channels)
        self.rate = int(self._file.samplerate)
        self.frames: int | None = int(self._file.frames)
        if want_rate is not None and want_rate != self.rate:
            self._file.close()
            raise InputFileError(
                path,
                f"sample rate is {self.rate} Hz but source.rate asks for {want_rate} Hz "
                "(resampling is not supported)",
            )
        if self.frames == 0 or self.channels == 0:
            self._file.close()
            raise InputFileError(path, "holds no samples")
        self._scratch = np.empty((0, self.channels), dtype=np.float32)
        self._pos = 0
        self.metadata: dict[str, Any] = {"file": path.name}

    def read_into(self, out: F32) -> int:
        n = out.shape[1]
        if self._scratch.shape[0] < n:  # sized once, on the first block
            self._scratch = np.empty((n, self.channels), dtype=np.float32)
        try:
            got = self._file.read(n, dtype="float32", always_2d=True, out=self._scratch[:n])
        except (sf.LibsndfileError, RuntimeError) as e:
            raise InputFileError(self._path, f"read failed at frame {self._pos} ({e})") from e
        k = int(got.shape[0])
        # COPY: de-interleave into the block's own buffer, handed to another thread
        out[:, :k] = got.T
        self._pos += k
        return k

    def rewind(self) -> None:
        self._file.seek(0)
        self._pos = 0

    def close(self) -> None:
        self._file.close()


class _NpyReader:
    """A .npy array, memory-mapped: 1-D is mono, 2-D is (frames, channels)."""

    def __init__(self, path: Path, rate: int):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputFileError(path, f"not a readable .npy file ({e})") from e
        if not isinstance(arr, np.ndarray):
            arr.close()  # an NpzFile holds the file open
            raise InputFileError(path, "not a .npy array (an .npz archive?)")
        if arr.dtype.kind not in "iuf":
            raise InputFileError(
                path, f"holds {arr.dtype} values; expected a numeric (integer or float) dtype"
            )
        if arr.ndim == 1:
            arr = arr[:, None]
        elif arr.ndim != 2:
            raise InputFileError(
                path,
                f"holds a {arr.ndim}-D array of shape {arr.shape}; "
                "expected 1-D (mono) or 2-D (frames, channels)",
            )
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InputFileError(path, "holds no samples")
        self._arr = arr
        self.channels = int(arr.shape[1])
        self.rate = rate
        self.frames: int | None = int(arr.shape[0])
        self._pos = 0
        self.metadata: dict[str, Any] = {"file": path.name}

    def read_into(self, out: F32) -> int:
        k = min(int(out.shape[1]), int(self._arr.shape[0]) - self._pos)
        # COPY: from the memory map, converted to float32, into the block's own buffer
        out[:, :k] = self._arr[self._pos : self._pos + k].T
        self._pos += k
        return k

    def rewind(self) -> None:
        self._pos = 0

    def close(self) -> None:
        # np.load's memmap has no close; dropping the reference unmaps the file.
        self._arr = np.empty((0, self.channels))


SIGMF_SUFFIXES = (".sigmf-meta", ".sigmf-data", ".sigmf")


class _SigmfReader:
    """A SigMF recording (``.sigmf-meta`` beside ``.sigmf-data``, or a ``.sigmf`` archive),
    through the ``sigmf`` package: rate and channels from its metadata, real types only.

    Integer data are scaled to [-1, 1) as SigMF's reader does.
    """

    def __init__(self, path: Path, want_rate: int | None):
        import sigmf
        from sigmf import sigmffile

        self._path = path
        try:
            self._file = sigmffile.fromfile(str(path))
        except (sigmf.error.SigMFError, OSError, ValueError, KeyError) as e:
            raise InputFileError(path, f"not a readable SigMF recording ({e})") from e
        datatype = str(self._file.get_global_field(sigmf.DATATYPE_KEY))
        if datatype.startswith("c"):
            raise InputFileError(
                path, f"holds complex ({datatype}) samples; only real recordings are supported"
            )
        rate = self._file.get_global_field(sigmf.SAMPLE_RATE_KEY)
        if rate is None or float(rate) != int(rate) or int(rate) <= 0:
            raise InputFileError(path, f"core:sample_rate {rate!r} is not a whole number of Hz")
        self.rate = int(rate)
        if want_rate is not None and want_rate != self.rate:
            raise InputFileError(
                path,
                f"sample rate is {self.rate} Hz but source.rate asks for {want_rate} Hz "
                "(resampling is not supported)",
            )
        self.channels = int(self._file.get_global_field(sigmf.NUM_CHANNELS_KEY, 1))
        self.frames: int | None = int(self._file.sample_count)
        if self.frames == 0:
            raise InputFileError(path, "holds no samples")
        self._pos = 0
        self.metadata = self._metadata(self._file.get_global_info())

    def _metadata(self, info: dict[str, Any]) -> dict[str, Any]:
        """``core:description``, and ``channel_names`` and ``units`` from any extension
        namespace (``sensor:units``): SigMF's core has no field for either."""
        meta: dict[str, Any] = {"file": self._path.name}
        if isinstance(info.get("core:description"), str):
            meta["description"] = info["core:description"]
        for key, value in info.items():
            namespace, _, field = key.partition(":")
            if namespace == "core" or field not in ("channel_names", "units"):
                continue
            if isinstance(value, str) and field == "units":
                value = [value] * self.channels
            if not (
                isinstance(value, list)
                and len(value) == self.channels
                and all(isinstance(v, str) for v in value)
            ):
                raise InputFileError(
                    self._path,
                    f"{key} must be a list of {self.channels} strings (one per channel)"
                    + (", or one string" if field == "units" else ""),
                )
            meta[field] = value
        return meta

    def read_into(self, out: F32) -> int:
        k = min(int(out.shape[1]), int(self.frames or 0) - self._pos)
        if k <= 0:
            return 0
        chunk = np.asarray(self._file.read_samples(self._pos, k)).reshape(k, self.channels)
        # COPY: converted to float32 and de-interleaved into the block's own buffer
        out[:, :k] = chunk.T
        self._pos += k
        return k

    def rewind(self) -> None:
        self._pos = 0

    def close(self) -> None:
        pass  # the sigmf package opens the data file per read


def _parse_row(line: str) -> list[float] | None:
    """The numbers of one CSV line, or None when a field is not a number."""
    try:
        return [float(field) for field in line.split(",")]
    except ValueError:
        return None


# Rows read at open to find the rate from a time column, when the config gives none.
_RATE_ROWS: Final = 1024


class _CsvReader:
    """Comma-separated text, a column per channel, with an optional header line of names
    and an optional time column.

    A time column is not a channel: its values must lie on the even grid
    ``t_first + row / rate`` (within ``tolerance`` of a step), which catches
    uneven spacing and missing rows alike; without a configured rate, the rate
    is the one the first rows' spacing gives. Read in chunks of rows, so a file
    of any size streams in constant memory.
    """

    def __init__(
        self, path: Path, rate: int | None, time_column: str | int | None, tolerance: float
    ):
        self._path = path
        self.frames: int | None = None  # unknown without reading the whole file
        self._tolerance = tolerance
        try:
            self._fh: TextIO = open(path, encoding="utf-8")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise InputFileError(path, f"cannot be read ({e.strerror})") from e
        try:
            names = self._open()
            self._time = None if time_column is None else self._time_index(time_column, names)
            self._t_first = self._first[self._time] if self._time is not None else 0.0
            self._data_cols = np.array([i for i in range(self._width) if i != self._time])
            self.channels = len(self._data_cols)
            if self.channels == 0:
                raise InputFileError(path, "holds only its time column, no channel")
            self.rate = self._find_rate(rate)
        except BaseException:
            self._fh.close()
            raise
        self.metadata: dict[str, Any] = {"file": path.name}
        if names is not None:
            self.metadata["channel_names"] = [names[i] for i in self._data_cols]
            if self._time is not None:
                self.metadata["time_column"] = names[self._time]

    def _open(self) -> list[str] | None:
        """Detect a header and the column count from the first non-blank lines; return
        the header's names, if any."""
        header: list[str] | None = None
        first: list[float] | None = None
        first_line = 0
        for lineno, line in enumerate(self._lines(), start=1):
            if not line.strip():
                continue
            first = _parse_row(line)
            if first is not None:
                first_line = lineno
                break
            if header is not None:  # a second non-numeric line: a bad row
                raise InputFileError(self._path, f"line {lineno}: not a row of numbers")
            header = [name.strip().strip('"') for name in line.split(",")]
        if first is None:
            raise InputFileError(self._path, "holds no samples")
        self._skip = first_line - 1  # lines before the data: blank lines and a header
        self._width = len(first)
        self._first = first
        if header is not None and len(header) != self._width:
            raise InputFileError(
                self._path,
                f"the header names {len(header)} columns but line {first_line} "
                f"holds {self._width}",
            )
        self.rewind()
        return header

    def _time_index(self, column: str | int, names: list[str] | None) -> int:
        if isinstance(column, int):
            if column >= self._width:
                raise InputFileError(
                    self._path,
                    f"has {self._width} columns, so no time column {column} (counted from 0)",
                )
            return column
        if names is None or column not in names:
            have = f"columns: {', '.join(names)}" if names else "no header line of names"
            raise InputFileError(self._path, f"has no time column {column!r} ({have})")
        return names.index(column)

    def _find_rate(self, rate: int | None) -> int:
        """The configured rate, or the one the time column's first rows give."""
        if self._time is None or rate is not None:
            if rate is None:
                raise ConfigError(
                    "is required for .csv input without a time column "
                    "(the file holds no sample rate; or set source.time_column)",
                    key="source.rate",
                )
            return rate
        lines = list(itertools.islice(self._lines(), _RATE_ROWS))
        times = self._parse(lines, self._skip + 1)[:, self._time]
        self.rewind()
        if times.size < 2:
            raise InputFileError(
                self._path, "has a single row: its time column gives no rate (set source.rate)"
            )
        # Over the first rows, not one step, since timestamps written with few decimals
        # jitter; the median step counts the periods between them, so that a missing row
        # is reported by the grid check instead of skewing the rate.
        steps = np.diff(times)
        span = float(times[-1] - times[0])
        median = float(np.median(steps))
        periods = float(np.round(steps / median).sum()) if median > 0 else 0.0
        found = round(periods / span) if span > 0 and periods > 0 else 0
        if not 1 <= found <= 768_000:
            raise InputFileError(
                self._path,
                f"the time column does not increase from its first rows "
                f"({float(times[0])!r} to {float(times[-1])!r} over {times.size} rows)",
            )
        return found

    def _lines(self) -> Iterator[str]:
        # Not `yield from self._fh`: closing this generator early would close the file.
        try:
            yield from iter(self._fh.readline, "")
        except UnicodeDecodeError as e:
            raise InputFileError(self._path, f"not UTF-8 text ({e.reason})") from e

    def read_into(self, out: F32) -> int:
        n = out.shape[1]
        k = 0
        while k < n:
            start_line = self._line + 1
            lines = list(itertools.islice(self._lines(), n - k))
            if not lines:
                break
            self._line += len(lines)
            rows = self._parse(lines, start_line)
            if self._time is not None:
                self._check_times(rows[:, self._time], lines, start_line)
                # COPY: the channels without the time column, into the block's own buffer
                out[:, k : k + rows.shape[0]] = rows[:, self._data_cols].T
            else:
                # COPY: parsed text into the block's own float32 buffer
                out[:, k : k + rows.shape[0]] = rows.T
            k += rows.shape[0]
            self._row += rows.shape[0]
        return k

    def _check_times(
        self, times: npt.NDArray[np.float64], lines: list[str], start_line: int
    ) -> None:
        """Refuse the first row whose time is off the grid ``t_first + row / rate``."""
        rows = self._row + np.arange(times.size)
        expected = self._t_first + rows / self.rate
        off = np.flatnonzero(np.abs(times - expected) > self._tolerance / self.rate)
        if off.size == 0:
            return
        i = int(off[0])
        data_lines = [n for n, line in enumerate(lines, start=start_line) if line.strip()]
        raise InputFileError(
            self._path,
            f"row {int(rows[i]) + 1} (line {data_lines[i]}): time {float(times[i])!r} is not "
            f"evenly spaced (expected {expected[i]:.9g} at {self.rate} Hz)",
        )

    def _parse(self, lines: list[str], start_line: int) -> npt.NDArray[np.float64]:
        """Parse rows (blank lines skipped); a bad row raises with its line number."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
                rows = np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
            if rows.shape[0] == 0 or rows.shape[1] == self._width:
                return rows.reshape(-1, self._width)
        except ValueError:
            pass
        # Slow path, only on a bad chunk: find the first bad line for the message
        # (loadtxt's own row numbers count from the chunk, inconsistently).
        for lineno, line in enumerate(lines, start=start_line):
            if not line.strip():
                continue
            row = _parse_row(line)
            if row is None:
                raise InputFileError(
                    self._path, f"line {lineno}: not a row of numbers: {line.strip()[:60]!r}"
                )
            if len(row) != self._width:
                raise InputFileError(
                    self._path,
                    f"line {lineno}: holds {len(row)} values, expected {self._width}",
                )
        end_line = start_line + len(lines) - 1
        raise InputFileError(self._path, f"lines {start_line}-{end_line}: cannot be parsed")

    def rewind(self) -> None:
        self._fh.seek(0)
        for _ in itertools.islice(self._lines(), self._skip):
            pass
        self._line = self._skip  # lines consumed so far
        self._row = 0  # data rows consumed so far

    def close(self) -> None:
        self._fh.close()


class FileSource:
    """Blocks read from a file: audio through soundfile, or sensor data from .npy or .csv.

    The kind follows the suffix (case-insensitive): ``.npy`` is a NumPy array
    (1-D mono, or 2-D with a column per channel; any integer or float dtype,
    converted to float32 without scaling), ``.csv`` is comma-separated text
    with a column per channel and an optional header line of names, and
    anything else is opened with soundfile (WAV, FLAC, OGG, AIFF, AU, CAF, ...),
    whose rate the file holds. The file is opened here, so a missing or
    unreadable input fails at start-up.

    A file source is lossless (``live = False``): the pipeline waits for it.

    Parameters
    ----------
    cfg : FileSourceConfig
        ``path``, ``rate`` (required for .npy/.csv, checked against audio
        files), ``realtime`` pacing and ``loop``.
    stream : str
        Name of the stream, copied into every block.

    Raises
    ------
    ConfigError
        ``source.path`` is unset, or ``source.rate`` is unset for .npy/.csv.
    InputFileError
        The file is missing, a directory, empty, unreadable, malformed, holds no
        samples, or its sample rate differs from ``source.rate``.
    """

    def __init__(self, cfg: FileSourceConfig, stream: str):
        if cfg.path is None:
            raise ConfigError("no input file given", key="source.path")
        self.cfg = cfg
        self.stream = stream
        path = Path(cfg.path)
        self.path = path
        self._reader = self._open(path, cfg)
        self.metadata: Mapping[str, Any] = self._reader.metadata
        self.layout = StreamLayout(self._reader.channels, self._reader.rate)
        self.live = False
        self.total_frames: int | None = None if cfg.loop else self._reader.frames

    @staticmethod
    def _open(path: Path, cfg: FileSourceConfig) -> _Reader:
        rate = cfg.rate
        try:
            st = path.stat()
        except FileNotFoundError as e:
            raise InputFileError(path, "no such file") from e
        except OSError as e:
            raise InputFileError(path, f"cannot be read ({e.strerror})") from e
        if path.is_dir():
            raise InputFileError(path, "is a directory, not a file")
        if st.st_size == 0:
            raise InputFileError(path, "is empty: it holds no samples")
        suffix = path.suffix.lower()
        if suffix in SIGMF_SUFFIXES:
            return _SigmfReader(path, rate)
        if cfg.time_column is not None and suffix != ".csv":
            raise ConfigError(
                f"applies to .csv input only, not {suffix or 'this'} input",
                key="source.time_column",
            )
        if suffix == ".csv":
            return _CsvReader(path, rate, cfg.time_column, cfg.time_tolerance)
        if suffix == ".npy":
            if rate is None:
                raise ConfigError(
                    "is required for .npy input (the file holds no sample rate)",
                    key="source.rate",
                )
            return _NpyReader(path, rate)
        return _AudioReader(path, rate)

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        """Yield the file from its start, in blocks of ``block_size`` frames.

        Parameters
        ----------
        block_size : int
            Frames per block (>= 1). The last block may be shorter; when looping,
            blocks run on across the end of the file and are all full.
        stop : threading.Event
            Ends the iteration (promptly, even while pacing) once set.

        Yields
        ------
        Block
            Fresh float32 arrays of shape (channels, frames), ``seq`` 0, 1, 2, ...
            and ``t0`` counting frames across loops; paced at real time when
            ``cfg.realtime``.

        Raises
        ------
        ValueError
            ``block_size`` < 1.
        InputFileError
            The file turned out to be malformed or unreadable part-way.
        """
        if block_size < 1:
            raise ValueError(f"{block_size=} must be >= 1")
        reader = self._reader
        reader.rewind()
        pacer = Pacer(reader.rate, stop, realtime=self.cfg.realtime)
        t0 = 0
        seq = 0
        while not stop.is_set():
            samples = np.empty((reader.channels, block_size), dtype=np.float32)
            got = reader.read_into(samples)
            while got < block_size and self.cfg.loop:
                reader.rewind()
                more = reader.read_into(samples[:, got:])
                if more == 0:  # the file shrank to nothing under us
                    raise InputFileError(self.path, "holds no samples")
                got += more
            if got == 0:
                return
            if got < block_size:
                # COPY: the short last block gets a contiguous buffer of its own
                samples = np.ascontiguousarray(samples[:, :got])
            captured_ns = pacer.wait_for(t0 + got)
            if stop.is_set():
                return
            yield Block(samples, self.stream, seq, t0, reader.rate, captured_ns)
            seq += 1
            t0 += got
            if got < block_size:
                return

    def health(self) -> dict[str, Any]:
        """A file has no state to report: a read error stops the stream instead."""
        return {}

    def close(self) -> None:
        """Close the file."""
        self._reader.close()
