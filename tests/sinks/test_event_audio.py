"""Tests of the event clips: pre-roll from the ring, post-roll, cuts, gaps, and replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from streamer.block import Annotation, Block
from streamer.cli import main
from streamer.sinks.event_audio import Clip, EventClipper
from tests.helpers.signals import noise, random_splits

RATE = 1000
ROOT = Path(__file__).resolve().parents[2]


def event(state: str, event_id: int, start_s: float, detected_s: float, **kw: Any) -> Annotation:
    fields = {"state": state, "event_id": event_id, "start_s": start_s, "detected_s": detected_s}
    return Annotation("anomaly", fields | kw)


def stream(
    x: npt.NDArray[np.float32],
    sizes: list[int],
    notes: dict[int, list[Annotation]],
    clipper: EventClipper,
    *,
    skip: tuple[int, int] | None = None,
) -> list[Clip]:
    """Feed ``x`` in blocks of ``sizes``; ``notes[i]`` rides on the block holding sample i-1
    (the sample where a detector would decide); ``skip`` [a, b) is lost (a gap in t0)."""
    done: list[Clip] = []
    t0 = 0
    for seq, n in enumerate(sizes):
        a, b = t0, t0 + n
        t0 = b
        if skip is not None and skip[0] <= a and b <= skip[1]:
            continue
        anns = [ann for i, ns in notes.items() if a < i <= b for ann in ns]
        block = Block(np.ascontiguousarray(x[:, a:b]), "t", seq, a, RATE, 0, tuple(anns))
        done += clipper.consume(block)
    return done + clipper.flush()


def clipper(pre: float = 0.5, post: float = 0.25, max_s: float = 10.0) -> EventClipper:
    return EventClipper(2, RATE, pre_roll_s=pre, post_roll_s=post, max_s=max_s)


@pytest.mark.parametrize("seed", range(5))
def test_clip_is_the_stream_from_pre_roll_to_post_roll(seed: int) -> None:
    x = noise(2, 8000, seed)
    # Event 3 starts at 2.0 s, decided at 2.1 s; ends (last above) at 3.0 s, offset decided 3.4 s.
    notes = {
        2100: [event("onset", 3, 2.0, 2.1)],
        3400: [event("offset", 3, 2.0, 3.4, duration_s=1.0)],
    }
    sizes = random_splits(8000, np.random.default_rng(seed), max_block=700)
    (clip,) = stream(x, sizes, notes, clipper())
    assert clip.event_id == 3
    a, b = 2000 - 500, 3000 + 250
    np.testing.assert_array_equal(clip.audio(), x[:, a:b].T)


def test_long_event_is_cut_at_max_and_open_clips_flush_at_the_end() -> None:
    x = noise(2, 6000, 1)
    notes = {1100: [event("onset", 0, 1.0, 1.1)], 5100: [event("onset", 1, 5.0, 5.1)]}
    first, second = sorted(
        stream(x, [250] * 24, notes, clipper(max_s=2.0)), key=lambda c: c.event_id
    )
    np.testing.assert_array_equal(first.audio(), x[:, 500:2500].T)  # 2 s from the pre-roll on
    np.testing.assert_array_equal(second.audio(), x[:, 4500:6000].T)  # as far as the stream went


def test_pre_roll_stops_at_a_gap_and_at_the_stream_start() -> None:
    x = noise(2, 5000, 2)
    notes = {
        300: [event("onset", 0, 0.2, 0.3)],
        400: [event("offset", 0, 0.2, 0.4, duration_s=0.1)],
        3100: [event("onset", 1, 3.0, 3.1)],
        3200: [event("offset", 1, 3.0, 3.2, duration_s=0.1)],
    }
    clips = stream(x, [100] * 50, notes, clipper(), skip=(2700, 2900))
    early, late = sorted(clips, key=lambda c: c.event_id)
    np.testing.assert_array_equal(early.audio(), x[:, 0:550].T)  # no samples before 0
    np.testing.assert_array_equal(late.audio(), x[:, 2900:3350].T)  # none from before the gap


def test_replay_writes_event_audio(tmp_path: Path) -> None:
    """A tone burst in noise, replayed with --events --event-audio: the WAV is the input's span."""
    rate = 16_000
    rng = np.random.default_rng(7)
    x = 0.01 * rng.standard_normal(rate * 8)
    t = np.arange(rate) / rate
    x[5 * rate : 6 * rate] += 0.2 * np.sin(2 * np.pi * 1500 * t)
    wav = tmp_path / "in.wav"
    soundfile.write(wav, x.astype(np.float32), rate, subtype="FLOAT")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        '[[stages]]\nkind = "anomaly"\n[output]\nevent_pre_roll_s = 0.5\nevent_post_roll_s = 0.2\n'
    )
    events = tmp_path / "ev.jsonl"
    code = main(
        ["replay", str(wav), "--config", str(cfg), "--events", str(events), "--event-audio"]
    )
    assert code == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["state"] for e in lines] == ["onset", "offset"]
    name = f"ev.event0-{lines[0]['start_s']:.3f}s.wav"
    assert lines[0]["audio_file"] == lines[1]["audio_file"] == name
    clip, clip_rate = soundfile.read(tmp_path / name, dtype="float32")
    assert clip_rate == rate
    start = round((lines[0]["start_s"] - 0.5) * rate)
    end = round((lines[1]["start_s"] + lines[1]["duration_s"] + 0.2) * rate)
    np.testing.assert_array_equal(clip, x.astype(np.float32)[start:end])
    assert abs(lines[0]["start_s"] - 5.0) < 0.03 and abs(end / rate - 6.2) < 0.08


def test_event_audio_needs_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[output]\nevent_audio = true\n")
    assert main(["run", str(cfg)]) == 2
    assert "event_audio needs events" in capsys.readouterr().err
