"""Writes a stream's anomaly events to a file, one JSON object per line (``replay --events``),
and optionally the audio around each event as a WAV next to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import soundfile

from streamer.block import Block
from streamer.errors import StreamerError
from streamer.metrics import BlockTiming, StreamMetrics
from streamer.sinks.base import SinkWorker
from streamer.sinks.event_audio import Clip, EventClipper

__all__ = ["EventWriter"]

_Job = tuple[list[dict[str, Any]], list[Clip]]


class EventWriter:
    """A sink that appends every ``anomaly`` annotation as a JSON line, flushed per block.

    Each line holds the event's fields plus ``stream``, ``seq`` (of the block it
    was found in) and ``t0``: the same fields as on the ``anomaly/`` topic but
    ``published_ns``. With a ``clipper``, each event's audio (pre-roll to
    post-roll, every channel, 32-bit float) goes to ``STEM.event<ID>-<START>s.wav``
    beside the events file (the start keeps names apart when a reloaded stage
    numbers its events from 0 again), named in the event's lines as
    ``audio_file``; a clip is written once complete (its post-roll heard), or at
    the end of the stream.
    """

    name = "events"

    def __init__(
        self,
        path: Path,
        stream: str,
        metrics: StreamMetrics,
        *,
        lossless: bool,
        clipper: EventClipper | None = None,
    ):
        self.path = path
        self._stream = stream
        self._clipper = clipper
        try:
            self._file = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise StreamerError(f"{path}: cannot write: {exc.strerror}") from exc
        self._worker: SinkWorker[_Job] = SinkWorker(
            "events", self._write, capacity=1024, lossless=lossless, metrics=metrics
        )

    def clip_path(self, event_id: int, start_s: float) -> Path:
        """Where the audio of the event is written."""
        return self.path.with_name(f"{self.path.stem}.event{event_id}-{start_s:.3f}s.wav")

    def consume(self, block: Block, timing: BlockTiming) -> None:
        events = [
            {"stream": self._stream, "seq": block.seq, "t0": block.t0, "rate": block.rate,
             "captured_ns": block.captured_ns, **a.fields}
            for a in block.annotations
            if a.kind == "anomaly"
        ]  # fmt: skip
        clips: list[Clip] = []
        if self._clipper is not None:
            clips = self._clipper.consume(block)
            for event in events:
                event["audio_file"] = self.clip_path(event["event_id"], event["start_s"]).name
        if events or clips:
            self._worker.submit((events, clips))

    def _write(self, job: _Job) -> None:
        events, clips = job
        for event in events:
            self._file.write(json.dumps(event, allow_nan=False) + "\n")
        self._file.flush()
        for clip in clips:
            path = self.clip_path(clip.event_id, clip.start_s)
            try:
                soundfile.write(path, clip.audio(), clip.rate, subtype="FLOAT")
            except (OSError, soundfile.LibsndfileError) as exc:
                raise StreamerError(f"{path}: cannot write event audio: {exc}") from exc

    def close(self) -> None:
        try:
            if self._clipper is not None:
                clips = self._clipper.flush()
                if clips:
                    self._worker.submit(([], clips))
            self._worker.close()
        finally:
            self._file.close()
