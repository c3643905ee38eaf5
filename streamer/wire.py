"""The ZeroMQ wire format: encode and decode multipart messages (docs/wire-format.md).

Every message has two or three frames::

    [topic: ASCII "KIND/STREAM"] [header: UTF-8 JSON object] [payload: raw array bytes]

The payload frame is present for array topics (``audio``, ``spectrum``) only;
its dtype and shape are in the header. No pickle, ever: a subscriber in any
language can decode a message from the page alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamer.errors import WireFormatError

__all__ = [
    "ARRAY_DTYPES",
    "FORMAT_VERSION",
    "REQUIRED_HEADER_KEYS",
    "TOPIC_KINDS",
    "Message",
    "decode",
    "encode",
    "topic_for",
]

FORMAT_VERSION: Final = 1
TOPIC_KINDS: Final = ("audio", "spectrum", "anomaly", "metrics", "status")
REQUIRED_HEADER_KEYS: Final = ("v", "stream", "seq", "t0", "rate", "captured_ns", "published_ns")
ARRAY_DTYPES: Final = ("<f4",)
"""Payload dtypes a decoder accepts: little-endian float32 only, for now."""
MAX_PAYLOAD_BYTES: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message; ``array`` is a read-only view of the payload frame, or None."""

    kind: str
    stream: str
    header: dict[str, Any]
    array: npt.NDArray[np.float32] | None

    @property
    def topic(self) -> str:
        return f"{self.kind}/{self.stream}"


def topic_for(kind: str, stream: str) -> str:
    """The topic string of ``kind`` messages of ``stream``."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"topic kind {kind!r} is not one of {TOPIC_KINDS}")
    return f"{kind}/{stream}"


def encode(
    topic: str, header: Mapping[str, Any], array: npt.NDArray[np.float32] | None = None
) -> list[bytes | memoryview]:
    """Frames of one message: topic, JSON header (``v`` added) and the array's bytes.

    Parameters
    ----------
    topic : str
        ``KIND/STREAM``, ASCII.
    header : mapping
        JSON-serialisable fields; must not contain NaN or infinity.
    array : ndarray of float32, optional
        Sent as C-contiguous little-endian bytes through the buffer protocol
        (no copy when it already is); ``dtype`` and ``shape`` go in the header.
    """
    fields: dict[str, Any] = {"v": FORMAT_VERSION, **header}
    frames: list[bytes | memoryview] = [topic.encode("ascii"), b""]
    if array is not None:
        # COPY only when the array is not already C-contiguous little-endian float32.
        payload = np.ascontiguousarray(array, dtype="<f4")
        fields["dtype"] = "<f4"
        fields["shape"] = list(payload.shape)
        frames.append(payload.data.cast("B") if payload.size else b"")
    frames[1] = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return frames


def _frame_bytes(frame: Any) -> bytes | memoryview:
    # zmq.Frame exposes .buffer; bytes and memoryview pass through.
    buffer = getattr(frame, "buffer", frame)
    if not isinstance(buffer, bytes | memoryview):
        raise WireFormatError(f"frame of type {type(frame).__name__} is not bytes")
    return buffer


def decode(frames: Sequence[Any], *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> Message:
    """Check and decode one multipart message.

    Raises
    ------
    WireFormatError
        Saying what is wrong: frame count, topic, JSON, version, missing keys,
        dtype, shape or payload size.
    """
    if len(frames) not in (2, 3):
        raise WireFormatError(f"message has {len(frames)} frames, expected 2 or 3")
    raw_topic, raw_header = _frame_bytes(frames[0]), _frame_bytes(frames[1])
    try:
        topic = bytes(raw_topic).decode("ascii")
    except UnicodeDecodeError:
        raise WireFormatError("topic is not ASCII") from None
    kind, sep, stream = topic.partition("/")
    if not sep or kind not in TOPIC_KINDS or not stream:
        raise WireFormatError(f"topic {topic!r} is not KIND/STREAM with KIND in {TOPIC_KINDS}")
    try:
        header = json.loads(bytes(raw_header))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireFormatError("header is not a JSON object")
    if header.get("v") != FORMAT_VERSION:
        raise WireFormatError(f"format version {header.get('v')!r}, expected {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_HEADER_KEYS if key not in header]
    if missing:
        raise WireFormatError(f"header lacks {missing}")
    if header["stream"] != stream:
        raise WireFormatError(f"header stream {header['stream']!r} differs from topic {topic!r}")
    array = None
    if len(frames) == 3:
        array = _decode_array(header, _frame_bytes(frames[2]), max_payload_bytes)
    return Message(kind=kind, stream=stream, header=header, array=array)


def _decode_array(
    header: Mapping[str, Any], payload: bytes | memoryview, max_bytes: int
) -> npt.NDArray[np.float32]:
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in ARRAY_DTYPES:
        raise WireFormatError(f"dtype {dtype!r} is not one of {ARRAY_DTYPES}")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 4
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise WireFormatError(f"shape {shape!r} is not a list of 1 to 4 sizes")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if expected > max_bytes:
        raise WireFormatError(f"payload of {expected} bytes exceeds the limit of {max_bytes}")
    if len(payload) != expected:
        raise WireFormatError(
            f"payload has {len(payload)} bytes, shape {shape} of {dtype} needs {expected}"
        )
    return np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape)
