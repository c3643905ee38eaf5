"""Streams across processes: streamer A's output is streamer B's input, and a sensor bridge
feeds a daemon, all over real ZeroMQ on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.signal

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


def test_bridge_to_filter_to_detector_across_three_processes(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """tools/publish_sensor.py -> streamer A (zmq source, high-pass FIR) -> streamer B (zmq
    source, anomaly) -> subscribers: A's samples are lfilter's, B passes them on unchanged
    with contiguous seq, and B reports the tone that appears 5 s in."""
    rate, block = 16_000, 400
    rng = np.random.default_rng(11)
    t = np.arange(8 * rate) / rate
    x = 0.01 * rng.standard_normal(t.size)
    for h, amp in ((1, 0.1), (2, 0.05), (3, 0.03)):
        x += amp * np.sin(2 * np.pi * 50 * h * t)
    tone = (t >= 5.0) & (t < 6.5)
    x[tone] += 0.02 * np.sin(2 * np.pi * 2500 * t[tone])
    np.save(tmp_path / "pump.npy", x.astype(np.float32)[:, None])
    bridge_ep, a_ep, b_ep = free_tcp_endpoint(), free_tcp_endpoint(), free_tcp_endpoint()
    for name, source_ep, topic, stage, out_ep in (
        ("a", bridge_ep, "audio/sensor",
         'kind = "fir"\ndesign = "highpass"\ncutoff_hz = 100.0\nnumtaps = 255', a_ep),
        ("b", a_ep, "audio/a", 'kind = "anomaly"', b_ep),
    ):  # fmt: skip
        (tmp_path / f"{name}.toml").write_text(
            f'stream = "{name}"\n[source]\nkind = "zmq"\nendpoint = "{source_ep}"\n'
            f'topic = "{topic}"\nrate = {rate}\nchannels = 1\n[[stages]]\n{stage}\n'
            f'[pipeline]\nblock = {block}\nheartbeat_s = 0.2\n[publish]\nendpoint = "{out_ep}"\n'
        )
    from_a, from_b = Collector(a_ep), Collector(b_ep)
    a = start([*STREAMER, "run", str(tmp_path / "a.toml")], cli_env)
    b = start([*STREAMER, "run", str(tmp_path / "b.toml")], cli_env)
    bridge = None
    try:
        for c in (from_a, from_b):
            c.wait_for("a heartbeat", lambda c=c: len(c.of("status")) > 0)
        bridge = start(
            [sys.executable, str(REPO / "tools" / "publish_sensor.py"), "--endpoint", bridge_ep,
             "--stream", "sensor", "--rate", str(rate), "--block", str(block),
             "--file", str(tmp_path / "pump.npy")],
            cli_env,
        )  # fmt: skip
        from_b.wait_for(
            "the tone's offset from B",
            lambda: any(m.header["state"] == "offset" for m in from_b.of("anomaly")),
        )
        bridge.communicate(timeout=20)
        n_a = len(from_a.of("audio"))
        from_b.wait_for("B's last audio", lambda: len(from_b.of("audio")) >= n_a)
        stop(a)
        stop(b)
    finally:
        for proc in (a, b, bridge):
            if proc is not None and proc.poll() is None:
                proc.kill()
        from_a.close()
        from_b.close()
    a_audio, b_audio = from_a.of("audio"), from_b.of("audio")
    for audio in (a_audio, b_audio):
        seq = [m.header["seq"] for m in audio]
        assert seq == list(range(seq[0], seq[0] + len(seq))), "seq has gaps"
    # A's stream starts at the first bridge block it received, its filter from rest.
    taps = scipy.signal.firwin(255, 100.0, pass_zero=False, fs=rate)
    first = a_audio[0].array
    assert first is not None and a_audio[0].header["t0"] == 0
    starts = [
        s for s in range(0, x.size - block, block)
        if np.allclose(scipy.signal.lfilter(taps, 1, x[s : s + block]), first[0], atol=1e-6)
    ]  # fmt: skip
    assert starts, "A's first block is not the filtered start of a bridge block"
    s0 = starts[0]
    y = scipy.signal.lfilter(taps, 1, x[s0:])
    for m in a_audio:
        t0 = m.header["t0"]
        assert m.array is not None
        np.testing.assert_allclose(m.array[0], y[t0 : t0 + block], atol=1e-6)
    by_t0 = {m.header["t0"]: m.array for m in a_audio}
    for m in b_audio:  # B's stream starts at A's first block: the same t0 on both
        np.testing.assert_array_equal(m.array, by_t0[m.header["t0"]])
    (onset,) = [m.header for m in from_b.of("anomaly") if m.header["state"] == "onset"]
    assert onset["detector"] == "tonal" and abs(onset["peak_hz"] - 2500.0) < 10.0
    assert 5.0 - 0.05 <= onset["detected_s"] + s0 / rate <= 6.5
