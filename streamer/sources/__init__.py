"""Sources of blocks, opened from their configs by kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from streamer.config import SourceConfig
from streamer.sources.base import NO_METADATA, Pacer, Source
from streamer.sources.file import FileSource
from streamer.sources.mic import MicSource
from streamer.sources.synth import SynthSource
from streamer.sources.zmq import ZmqSource

__all__ = [
    "NO_METADATA",
    "SOURCE_KINDS",
    "FileSource",
    "MicSource",
    "Pacer",
    "Source",
    "SynthSource",
    "ZmqSource",
    "open_source",
]

SourceFactory = Callable[[Any, str], Source]
SOURCE_KINDS: Final[dict[str, SourceFactory]] = {
    "synth": SynthSource,
    "file": FileSource,
    "mic": MicSource,
    "zmq": ZmqSource,
}


def open_source(cfg: SourceConfig, stream: str) -> Source:
    """Open the source a config asks for; a missing or unreadable input fails here.

    Parameters
    ----------
    cfg : SynthSourceConfig, FileSourceConfig or MicSourceConfig
        The ``[source]`` table; its ``kind`` picks the class in `SOURCE_KINDS`.
    stream : str
        Name of the stream, copied into every block.

    Returns
    -------
    Source
        Ready to iterate with ``blocks(block_size, stop)``.

    Raises
    ------
    ConfigError, InputFileError
        The source refused its config or its input.
    """
    return SOURCE_KINDS[cfg.kind](cfg, stream)
