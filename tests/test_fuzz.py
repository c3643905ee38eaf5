"""Fuzzing the two doors to the outside: the config loader and the wire decoder.

Whatever comes in, the answer is a result or the project's own error, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import Config, load_config, parse_config
from streamer.errors import ConfigError, WireFormatError
from streamer.wire import Message, decode, encode

KEYS = ["stream", "source", "stages", "pipeline", "publish", "output", "prometheus", "kind",
        "block", "rate", "channels", "numtaps", "cutoff_hz", "design", "taps_file", "endpoint",
        "path", "realtime", "device", "bogus", "window", "overflow", "heartbeat_s"]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["fir", "synth", "file", "mic", "zmq", "lowpass", "bandstop", "hamming",
                     "tcp://127.0.0.1:1", "drop-oldest", "sub"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=20,
)
CONFIGS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)


@settings(max_examples=300, deadline=None)
@given(CONFIGS)
def test_config_loader_never_crashes(raw: dict[str, Any]) -> None:
    try:
        assert isinstance(parse_config(raw, environ={}), Config)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_config_files_of_any_text_never_crash(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path, environ={})
        except ConfigError as exc:
            assert str(exc).startswith(str(path))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=8), max_size=4))
def test_environment_overrides_never_crash(extra: dict[str, str]) -> None:
    env = {f"STREAMER__{k.upper()}": v for k, v in extra.items()}
    with contextlib.suppress(ConfigError):
        parse_config({}, environ=env)


FRAMES = st.lists(st.binary(max_size=64), min_size=0, max_size=5)
HEADERS = st.dictionaries(
    st.sampled_from(["v", "stream", "seq", "t0", "rate", "captured_ns", "published_ns",
                     "dtype", "shape", "x"]),
    st.one_of(SCALARS, st.lists(st.integers(-3, 1 << 31), max_size=5)),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(FRAMES)
def test_decoder_never_crashes_on_bytes(frames: list[bytes]) -> None:
    with contextlib.suppress(WireFormatError):
        assert isinstance(decode(frames), Message)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"audio/a", b"status/a", b"spectrum/a", b"x/a"]), HEADERS,
       st.one_of(st.none(), st.binary(max_size=64)))  # fmt: skip
def test_decoder_never_crashes_on_plausible_messages(
    topic: bytes, header: dict[str, Any], payload: bytes | None
) -> None:
    try:
        frames = [topic, json.dumps(header).encode()]
    except ValueError:  # NaN in the header: not JSON
        return
    if payload is not None:
        frames.append(payload)
    try:
        message = decode(frames)
    except WireFormatError:
        return
    if message.array is not None:
        assert message.array.nbytes == len(payload or b"")


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(0, 64), st.integers(0, 2**62))
def test_encode_decode_round_trip(channels: int, frames: int, seq: int) -> None:
    rng = np.random.default_rng(seq % 1000)
    block = rng.standard_normal((channels, frames)).astype(np.float32)
    header = {"stream": "s", "seq": seq, "t0": seq, "rate": 48000, "captured_ns": seq,
              "published_ns": seq}  # fmt: skip
    message = decode([bytes(f) for f in encode("audio/s", header, block)])
    assert message.header["seq"] == seq
    assert message.array is not None
    np.testing.assert_array_equal(message.array, block)
