"""Streams across processes: streamer A's output is streamer B's input, and a sensor bridge
feeds a daemon, all over real ZeroMQ on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import REPO, STREAMER, free_tcp_endpoint
from .helpers.collector import Collector
from .helpers.offline import offline_default_output


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def test_streamer_feeds_streamer_exactly(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A (synth through the default FIR) -> B (zmq source, no stages) -> subscriber."""
    a_endpoint, b_endpoint = free_tcp_endpoint(), free_tcp_endpoint()
    b_cfg = tmp_path / "b.toml"
    b_cfg.write_text(
        'stream = "b"\nstages = []\n'
        f'[source]\nkind = "zmq"\nendpoint = "{a_endpoint}"\ntopic = "audio/main"\n'
        f'[pipeline]\nheartbeat_s = 0.2\n[publish]\nendpoint = "{b_endpoint}"\n'
    )
    collector = Collector(b_endpoint)
    b = start([*STREAMER, "run", str(b_cfg)], cli_env)
    a = start([*STREAMER, "run"], {**cli_env, "STREAMER__PUBLISH__ENDPOINT": a_endpoint})
    try:
        collector.wait_for("audio through B", lambda: len(collector.of("audio")) > 200)
        stop(a)
        b_err = stop(b)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
        collector.close()
    audio = collector.of("audio")
    seq = [m.header["seq"] for m in audio]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "B's seq has gaps"
    # B's t0 counts from the first block it received; find where that was in A's stream.
    offline = offline_default_output((audio[-1].header["t0"] + 256) / 48000 + 30)
    first = audio[0].array
    assert first is not None
    starts = [
        s for s in range(0, offline.shape[1] - 256, 256)
        if np.allclose(offline[:, s : s + 256], first, atol=2e-6)
    ]  # fmt: skip
    assert starts, "B's first block is not a block of A's output"
    offset = starts[0] - audio[0].header["t0"]  # A's t0 minus B's t0
    for m in audio:
        t0 = offset + m.header["t0"]
        np.testing.assert_allclose(m.array, offline[:, t0 : t0 + 256], atol=2e-6, rtol=0)
    status = collector.of("status")[-1].header
    assert status["source"]["sender_lost_blocks"] == 0
    assert status["source"]["refused"] == {}
    # A and B share this host's clock: B's end-to-end latency spans both.
    metrics = collector.of("metrics")[-1].header
    assert metrics["end_to_end_ns"] > metrics["processing_ns"]
    assert "Traceback" not in b_err


def test_sensor_bridge_feeds_the_daemon(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """tools/publish_sensor.py (pyzmq and numpy only) -> streamer (zmq source, high-pass)."""
    sensor_endpoint, out_endpoint = free_tcp_endpoint(), free_tcp_endpoint()
    cfg = tmp_path / "pump.toml"
    cfg.write_text(
        'stream = "pump1"\n'
        f'[source]\nkind = "zmq"\nendpoint = "{sensor_endpoint}"\nrate = 10000\nchannels = 3\n'
        '[[stages]]\nkind = "fir"\ndesign = "highpass"\ncutoff_hz = 10.0\nnumtaps = 801\n'
        f'[pipeline]\nheartbeat_s = 0.2\n[publish]\nendpoint = "{out_endpoint}"\n'
    )
    collector = Collector(out_endpoint)
    daemon = start([*STREAMER, "run", str(cfg)], cli_env)
    bridge = start(
        [sys.executable, str(REPO / "tools" / "publish_sensor.py"), "--endpoint",
         sensor_endpoint, "--stream", "pump", "--rate", "10000", "--block", "500"],
        cli_env,
    )  # fmt: skip
    try:
        collector.wait_for("pump audio", lambda: len(collector.of("audio")) > 40)
        bridge.terminate()
        bridge.communicate(timeout=20)
        stop(daemon)
    finally:
        for proc in (bridge, daemon):
            if proc.poll() is None:
                proc.kill()
        collector.close()
    audio = collector.of("audio")
    assert all(m.topic == "audio/pump1" and m.array is not None for m in audio)
    assert {m.array.shape for m in audio if m.array is not None} == {(3, 500)}
    seq = [m.header["seq"] for m in audio]
    assert seq == list(range(seq[0], seq[0] + len(seq)))
    t0 = [m.header["t0"] for m in audio]
    assert np.all(np.diff(t0) == 500)
    late = np.concatenate([m.array for m in audio[20:] if m.array is not None], axis=1)
    assert 0.05 < float(np.sqrt(np.mean(late**2))) < 1.0  # the pump, not silence
