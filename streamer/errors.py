"""The exception tree of streamer: every error a user can cause or meet.

::

    StreamerError                  base; the CLI turns it into exit 2 and one line
    ├── ConfigError                a config key has a wrong name, type or value (.path, .key)
    ├── InputFileError             an input file is missing, unreadable or malformed (.path)
    ├── DeviceError                an audio device failed or is absent
    │   └── NoInputDeviceError     a microphone was asked for and none is there
    ├── BackendUnavailableError    a compute backend was asked for and is absent (CUDA)
    ├── BlockLayoutError           a block's channels or rate differ from what a stage was built for
    └── WireFormatError            a ZeroMQ message does not follow the wire format

Errors raised while a pipeline runs (a stage bug, a full disk) that are not
``StreamerError`` exit 1.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BackendUnavailableError",
    "BlockLayoutError",
    "ConfigError",
    "DeviceError",
    "InputFileError",
    "NoInputDeviceError",
    "StreamerError",
    "WireFormatError",
]


class StreamerError(Exception):
    """Base of every error streamer raises on purpose."""


class ConfigError(StreamerError):
    """A configuration value was refused.

    Parameters
    ----------
    reason : str
        What is wrong and what was expected.
    key : str, optional
        Dotted path of the offending key, e.g. ``stages[0].cutoff_hz``.
    path : Path, optional
        The config file, when there is one.
    """

    def __init__(self, reason: str, *, key: str | None = None, path: Path | None = None):
        self.reason = reason
        self.key = key
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "config"
        if self.key:
            where = f"{where}: {self.key}"
        return f"{where}: {self.reason}"


class InputFileError(StreamerError):
    """An input file (audio, sensor data, taps) could not be used."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DeviceError(StreamerError):
    """An audio device failed, vanished or could not be opened."""


class NoInputDeviceError(DeviceError):
    """A microphone was asked for and this machine has none."""


class BackendUnavailableError(StreamerError):
    """A compute backend (such as CUDA) was asked for and is not available."""


class BlockLayoutError(StreamerError):
    """A block does not have the channel count or rate its stage was built for."""


class WireFormatError(StreamerError):
    """A ZeroMQ message does not follow the wire format (docs/wire-format.md)."""
