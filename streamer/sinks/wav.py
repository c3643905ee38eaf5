"""Writes processed blocks to a 32-bit float WAV file on a thread of its own."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import soundfile as sf

from streamer.block import Block, StreamLayout
from streamer.errors import StreamerError
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.sinks.base import SinkWorker

__all__ = ["WavWriter"]


class WavWriter:
    """A sink that appends every block to a float32 WAV file.

    The file is created at construction (so a bad path fails at start-up) and
    finalised by `close`, leaving a valid file whatever stopped the stream.
    """

    name = "wav"

    def __init__(self, path: Path, layout: StreamLayout, metrics: StreamMetrics, *, lossless: bool):
        self.path = path
        try:
            self._file = sf.SoundFile(
                path,
                "w",
                samplerate=layout.rate,
                channels=layout.channels,
                format="WAV",
                subtype="FLOAT",
            )
        except (OSError, sf.LibsndfileError) as exc:
            raise StreamerError(f"{path}: cannot write: {exc}") from exc
        self._worker: SinkWorker[Block] = SinkWorker(
            "wav", self._write, capacity=256, lossless=lossless, metrics=metrics
        )

    def consume(self, block: Block, timing: BlockTiming) -> None:
        self._worker.submit(block)

    def _write(self, block: Block) -> None:
        try:
            # soundfile wants (frames, channels); the transposed view is copied by soundfile.
            self._file.write(block.samples.T)
        except sf.LibsndfileError as exc:
            # libsndfile says only "System error."; the file system says what it was.
            if shutil.disk_usage(self.path.parent).free == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) from exc
            raise OSError(f"{self.path}: write failed ({exc})") from exc

    def close(self) -> None:
        try:
            self._worker.close()
        finally:
            self._file.close()
