"""streamer: real-time block-streaming signal processing, published over ZeroMQ."""

from __future__ import annotations

from streamer.block import Block, StreamLayout
from streamer.config import Config, load_config
from streamer.errors import (
    BackendUnavailableError,
    BlockLayoutError,
    ConfigError,
    DeviceError,
    InputFileError,
    NoInputDeviceError,
    StreamerError,
    WireFormatError,
)
from streamer.pipeline import Pipeline, build_pipeline

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Block",
    "BlockLayoutError",
    "Config",
    "ConfigError",
    "DeviceError",
    "InputFileError",
    "NoInputDeviceError",
    "Pipeline",
    "StreamLayout",
    "StreamerError",
    "WireFormatError",
    "__version__",
    "build_pipeline",
    "load_config",
]
