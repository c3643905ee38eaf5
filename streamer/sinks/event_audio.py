"""Cuts the audio around each anomaly event out of the stream, pre-roll included.

An event is known only after its onset (the detector needs a frame or two),
so the audio before it comes from a ring buffer of the last few seconds. A
clip runs from ``pre_roll_s`` before the event's start to ``post_roll_s``
after its end (or ``max_s`` in all), holding every channel of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamer.block import Block

__all__ = ["Clip", "EventClipper"]

F32 = npt.NDArray[np.float32]

_DETECTION_SLACK_S = 2.0  # ring history beyond the pre-roll: room for the detection delay


@dataclass
class Clip:
    """The audio of one event, growing block by block until it is complete."""

    event_id: int
    start_s: float  # the event's start, as its annotations give it
    start: int  # stream sample index (the block's t0 counting) of the first sample
    end: int | None  # one past the last sample, once the event's offset is known
    limit: int  # one past the last sample it may ever hold (max_s)
    rate: int
    channels: int
    chunks: list[F32] = field(default_factory=list)
    next_sample: int = 0  # stream index of the next sample to take

    @property
    def stop(self) -> int:
        return self.limit if self.end is None else min(self.end, self.limit)

    def take(self, samples: F32, t0: int) -> None:
        """Append the part of ``samples`` (starting at stream index ``t0``) this clip wants."""
        a = max(self.next_sample, t0)
        b = min(self.stop, t0 + samples.shape[1])
        if b > a:
            self.chunks.append(samples[:, a - t0 : b - t0].copy())
            self.next_sample = b

    def audio(self) -> F32:
        """The clip so far as (frames, channels), the layout soundfile writes."""
        if not self.chunks:
            return np.zeros((0, self.channels), dtype=np.float32)
        # The offset may come after more than its post-roll was taken: cut there.
        audio = np.concatenate(self.chunks, axis=1)[:, : max(0, self.stop - self.start)]
        return np.ascontiguousarray(audio.T)


class EventClipper:
    """Keeps a ring of recent audio and turns anomaly onsets and offsets into clips.

    Parameters
    ----------
    channels, rate : int
        The stream's layout at this point of the pipeline.
    pre_roll_s, post_roll_s : float
        Audio kept before the event's start and after its end.
    max_s : float
        Longest clip; an event lasting longer is cut there.
    """

    def __init__(
        self, channels: int, rate: int, *, pre_roll_s: float, post_roll_s: float, max_s: float
    ):
        self.rate = rate
        self._pre = round(pre_roll_s * rate)
        self._post = round(post_roll_s * rate)
        self._max = max(1, round(max_s * rate))
        self._ring = np.zeros((channels, self._pre + round(_DETECTION_SLACK_S * rate)), np.float32)
        self._valid_from = 0  # oldest stream index the ring holds
        self._end = 0  # one past the newest stream index the ring holds
        self._open: dict[int, Clip] = {}

    def consume(self, block: Block) -> list[Clip]:
        """Take one block; return the clips it completed."""
        samples, t0 = block.samples, block.t0
        if t0 != self._end:  # a gap (lost samples) or the first block: history ends here
            self._valid_from = t0
        self._remember(samples, t0)
        for ann in block.annotations:
            if ann.kind != "anomaly":
                continue
            f = ann.fields
            event_id, start = int(f["event_id"]), round(f["start_s"] * self.rate)
            if f["state"] == "onset":
                self._begin(event_id, float(f["start_s"]), start)
            elif (clip := self._open.get(event_id)) is not None:
                clip.end = start + round(f["duration_s"] * self.rate) + self._post
        done = []
        for event_id, clip in list(self._open.items()):
            clip.take(samples, t0)
            if clip.next_sample >= clip.stop:
                done.append(self._open.pop(event_id))
        return done

    def flush(self) -> list[Clip]:
        """The clips still open at the end of the stream, as far as they got."""
        done = list(self._open.values())
        self._open.clear()
        return done

    def _begin(self, event_id: int, start_s: float, start: int) -> None:
        first = max(start - self._pre, self._valid_from, self._end - self._ring.shape[1])
        clip = Clip(
            event_id, start_s, first, None, first + self._max, self.rate, self._ring.shape[0],
            next_sample=first,
        )  # fmt: skip
        # The pre-roll and the event so far, out of the ring (the current block included).
        cap = self._ring.shape[1]
        for a in range(first, self._end, cap):
            b = min(self._end, a + cap)
            clip.take(self._ring_span(a, b), a)
        self._open[event_id] = clip

    def _remember(self, samples: F32, t0: int) -> None:
        cap = self._ring.shape[1]
        n = samples.shape[1]
        if n >= cap:
            samples, t0, n = samples[:, n - cap :], t0 + n - cap, cap
        i = t0 % cap
        first = min(n, cap - i)
        self._ring[:, i : i + first] = samples[:, :first]
        self._ring[:, : n - first] = samples[:, first:]
        self._end = t0 + n
        self._valid_from = max(self._valid_from, self._end - cap)

    def _ring_span(self, a: int, b: int) -> F32:
        """Stream samples [a, b) out of the ring (b - a <= its length)."""
        cap = self._ring.shape[1]
        idx = np.arange(a, b) % cap
        out: F32 = self._ring[:, idx]
        return out
