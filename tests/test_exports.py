"""The public names of the package, pinned (a removal or rename is a breaking change)."""

from __future__ import annotations

import streamer


def test_public_names() -> None:
    assert streamer.__all__ == [
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
    assert streamer.__all__ == sorted(streamer.__all__)
    for name in streamer.__all__:
        assert getattr(streamer, name) is not None


def test_every_error_is_a_streamer_error() -> None:
    for name in streamer.__all__:
        obj = getattr(streamer, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, streamer.StreamerError)
