"""Several streams in one daemon: one socket, a topic each, and a stream that fails leaves the
others running. Real subprocesses and real sockets on loopback."""

from __future__ import annotations

import signal
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from streamer.cli import main
from streamer.config import parse_config
from streamer.errors import ConfigError

from .conftest import STREAMER, free_tcp_endpoint
from .helpers.collector import Collector


def two_stream_config(tmp_path: Path, endpoint: str, b_source: str) -> Path:
    cfg = tmp_path / "streams.toml"
    cfg.write_text(
        f'[publish]\nendpoint = "{endpoint}"\n'
        '[streams.a]\nstages = []\n[streams.a.source]\nkind = "synth"\nrate = 16000\n'
        '[streams.a.pipeline]\nheartbeat_s = 0.2\n'
        f"[streams.b.source]\n{b_source}\n"
        '[[streams.b.stages]]\nkind = "fir"\ndesign = "lowpass"\ncutoff_hz = 1000.0\n'
        "numtaps = 31\n[streams.b.pipeline]\nheartbeat_s = 0.2\nblock = 100\n"
    )
    return cfg


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_two_streams_share_the_socket_and_a_failing_one_leaves_the_other(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    rows = [f"{v:.6f}" for v in np.sin(np.arange(12_000) * 0.05)]
    rows[6000] = "oops"  # stream b fails 0.75 s in (8 kHz, read at real-time pace)
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    endpoint = free_tcp_endpoint()
    b_source = 'kind = "file"\npath = "b.csv"\nrate = 8000\nrealtime = true'
    cfg = two_stream_config(tmp_path, endpoint, b_source)
    collector = Collector(endpoint)
    proc = subprocess.Popen(
        [*STREAMER, "run", str(cfg)], env=cli_env, stderr=subprocess.PIPE, text=True
    )
    try:
        collector.wait_for("b's blocks", lambda: len(collector.of("audio")) > 10)
        # Stream a goes on well past b's failure (b's last block is at 0.75 s).
        collector.wait_for(
            "a's audio beyond 3 s",
            lambda: any(
                m.header["stream"] == "a" and m.header["t0"] > 3 * 16000
                for m in collector.of("audio")
            ),
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
    assert proc.returncode == 2, err  # the bad file is the user's to fix
    assert "[b] stopped: " in err and "line 6001: not a row of numbers" in err
    assert "1 other stream(s) go on" in err
    audio = collector.of("audio")
    by_stream = {s: [m for m in audio if m.header["stream"] == s] for s in ("a", "b")}
    assert {m.topic for m in audio} == {"audio/a", "audio/b"}
    for messages in by_stream.values():
        assert contiguous([m.header["seq"] for m in messages])
    assert by_stream["a"][0].header["rate"] == 16000 and by_stream["b"][0].header["rate"] == 8000
    # Stream b's samples are its own chain's: the CSV through its low-pass.
    x = np.array([float(r) for r in rows[:6000]], dtype=np.float32)
    y = scipy.signal.lfilter(scipy.signal.firwin(31, 1000.0, fs=8000), 1, x.astype(np.float64))
    for m in by_stream["b"]:
        t0 = m.header["t0"]
        assert m.array is not None
        np.testing.assert_allclose(m.array[0], y[t0 : t0 + m.array.shape[1]], atol=1e-6)
    status_streams = {m.header["stream"] for m in collector.of("status")}
    assert status_streams == {"a", "b"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[streams]\n", r"toml: streams is empty: name at least one"),
        ('stages = []\n[streams.a]\n', r"stages belong inside each stream"),
        ('stream = "x"\n[streams.a]\n', r"stream belong inside each stream"),
        ("[streams.a.stages]\n", r"streams\.a\.stages: Input should be a valid list"),
        ('[[streams.a.stages]]\nkind = "fir"\nnumtaps = 0\n', r"streams\.a\.stages\[0\]\.numtaps"),
        ('[streams.a]\npublish = {}\n', r"streams\.a\.publish: unknown key"),
    ],
)
def test_bad_stream_tables_are_refused_with_their_key(
    tmp_path: Path, text: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["run", str(cfg)]) == 2
    assert "bad.toml" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=match):
        parse_config(tomllib.loads(text), path=cfg)


def test_streams_expand_into_single_stream_configs(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "publish": {"endpoint": "tcp://127.0.0.1:6001"},
            "streams": {"x": {"stages": []}, "y": {"pipeline": {"block": 64}}},
        },
        environ={},
    )
    x, y = cfg.stream_configs()
    assert (x.stream, x.stages, x.streams) == ("x", [], None)
    assert (y.stream, y.pipeline.block, [s.kind for s in y.stages]) == ("y", 64, ["fir", "anomaly"])
    assert x.publish.endpoint == y.publish.endpoint == "tcp://127.0.0.1:6001"
    assert cfg.one_stream("y") == y
    with pytest.raises(ConfigError, match=r"lists streams x, y: pick one with --stream"):
        cfg.one_stream()
    with pytest.raises(ConfigError, match=r"no stream 'z' in the config \(it has x, y\)"):
        cfg.one_stream("z")


def test_replay_takes_one_stream_of_a_several_stream_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = (0.3 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, 8000, subtype="FLOAT")
    cfg = two_stream_config(tmp_path, free_tcp_endpoint(), 'kind = "synth"')
    out = tmp_path / "out.wav"
    argv = ["replay", str(tmp_path / "in.wav"), "--config", str(cfg), "--output", str(out)]
    assert main(argv) == 2
    assert "lists streams a, b: pick one with --stream" in capsys.readouterr().err
    assert main([*argv, "--stream", "b"]) == 0
    y, rate = sf.read(out, dtype="float64")
    want = scipy.signal.lfilter(scipy.signal.firwin(31, 1000.0, fs=8000), 1, x.astype(np.float64))
    assert rate == 8000
    np.testing.assert_allclose(y, want, atol=1e-6)
