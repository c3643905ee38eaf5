"""Wire format: round trips, refusals, and the documented example."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from streamer.errors import WireFormatError
from streamer.wire import FORMAT_VERSION, REQUIRED_HEADER_KEYS, decode, encode, topic_for

from .conftest import REPO

HEADER = {
    "stream": "main",
    "seq": 7,
    "t0": 1792,
    "rate": 48000,
    "captured_ns": 2**62 + 5,
    "published_ns": 2**62 + 99,
}


def as_bytes(frames: list[bytes | memoryview]) -> list[bytes]:
    return [bytes(f) for f in frames]


def test_array_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((2, 256)).astype(np.float32)
    msg = decode(as_bytes(encode("audio/main", HEADER, block)))
    assert msg.kind == "audio" and msg.stream == "main" and msg.topic == "audio/main"
    assert msg.header["v"] == FORMAT_VERSION
    assert msg.header["captured_ns"] == 2**62 + 5
    assert msg.header["shape"] == [2, 256] and msg.header["dtype"] == "<f4"
    assert msg.array is not None
    np.testing.assert_array_equal(msg.array, block)


def test_non_contiguous_arrays_are_sent_in_logical_order() -> None:
    block = np.arange(12, dtype=np.float32).reshape(3, 4).T  # (4, 3), Fortran order
    msg = decode(as_bytes(encode("audio/x", {**HEADER, "stream": "x"}, block)))
    assert msg.array is not None
    np.testing.assert_array_equal(msg.array, block)


def test_empty_block_round_trip() -> None:
    msg = decode(as_bytes(encode("audio/main", HEADER, np.zeros((1, 0), np.float32))))
    assert msg.array is not None and msg.array.shape == (1, 0)


def test_header_only_message() -> None:
    frames = encode("metrics/main", {**HEADER, "processing_ns": 5})
    assert len(frames) == 2
    assert decode(as_bytes(frames)).header["processing_ns"] == 5


def test_nan_in_header_is_refused_at_encode() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        encode("status/main", {**HEADER, "rtf": float("nan")})


def frames_with(header: dict[str, object], payload: bytes | None = None) -> list[bytes]:
    out = [b"audio/main", json.dumps(header).encode()]
    return out if payload is None else [*out, payload]


FULL = {"v": 1, **HEADER, "dtype": "<f4", "shape": [1, 2]}


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"audio/main"], "1 frames, expected 2 or 3"),
        ([b"noise/main", b"{}"], "is not KIND/STREAM"),
        ([b"audio/", b"{}"], "is not KIND/STREAM"),
        ([b"\xff", b"{}"], "topic is not ASCII"),
        ([b"audio/main", b"{not json"], "header is not UTF-8 JSON"),
        ([b"audio/main", b"[1, 2]"], "header is not a JSON object"),
        (frames_with({**FULL, "v": 2}), "format version 2, expected 1"),
        (frames_with({"v": 1, "stream": "main"}), r"header lacks \['seq'"),
        (frames_with({**FULL, "stream": "other"}), "differs from topic"),
        (frames_with({**FULL, "dtype": "<f8"}, b"\0" * 16), "dtype '<f8' is not one of"),
        (frames_with({**FULL, "shape": "2"}, b"\0" * 8), "is not a list of 1 to 4 sizes"),
        (frames_with({**FULL, "shape": [1, -2]}, b"\0" * 8), "is not a list of 1 to 4 sizes"),
        (frames_with(FULL, b"\0" * 7), "payload has 7 bytes, shape \\[1, 2\\] of <f4 needs 8"),
        (frames_with({**FULL, "shape": [1 << 20, 1 << 20]}, b""), "exceeds the limit"),
    ],
)
def test_malformed_messages_are_refused(frames: list[bytes], match: str) -> None:
    with pytest.raises(WireFormatError, match=match):
        decode(frames)


def test_topic_for_refuses_unknown_kinds() -> None:
    assert topic_for("anomaly", "pump1") == "anomaly/pump1"
    with pytest.raises(ValueError, match="topic kind 'video'"):
        topic_for("video", "main")


def test_documented_audio_header_is_valid() -> None:
    """The header example on docs/wire-format.md decodes with a payload of its shape."""
    page = (REPO / "docs" / "wire-format.md").read_text()
    example = re.search(r"```json\n(.*?)```", page, re.S)
    assert example is not None
    header = json.loads(example.group(1))
    assert set(REQUIRED_HEADER_KEYS) <= set(header)
    n_bytes = 4 * header["shape"][0] * header["shape"][1]
    msg = decode([b"audio/main", json.dumps(header).encode(), b"\0" * n_bytes])
    assert msg.array is not None and msg.array.shape == tuple(header["shape"])
