"""The command line end to end: replay exactness, the daemon over real sockets, exit codes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import zmq

from streamer.cli import main
from streamer.wire import decode

from .conftest import REPO, STREAMER
from .helpers.collector import Collector
from .helpers.offline import offline_default_output

RATE = 16000


def write_wav(path: Path, channels: int, frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (0.3 * rng.standard_normal((frames, channels))).astype(np.float32)
    sf.write(path, x, RATE, subtype="FLOAT")
    return x


@pytest.fixture
def taps_config(tmp_path: Path) -> tuple[Path, np.ndarray]:
    taps = scipy.signal.firwin(101, [300, 3000], pass_zero=False, fs=RATE)
    taps[7] += 0.05  # not linear phase: nothing special to exploit
    np.save(tmp_path / "taps.npy", taps)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[stages]]\nkind = "fir"\ntaps_file = "taps.npy"\n')
    return cfg, taps


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("block", [1, 37, 256, 1000, 6000])
def test_replay_matches_lfilter(
    tmp_path: Path, taps_config: tuple[Path, np.ndarray], channels: int, block: int
) -> None:
    cfg, taps = taps_config
    frames = 800 if block == 1 else 5000
    x = write_wav(tmp_path / "in.wav", channels, frames, seed=channels)
    out = tmp_path / "out.wav"
    argv = ["replay", str(tmp_path / "in.wav"), "--config", str(cfg), "--output", str(out)]
    assert main([*argv, "--block", str(block)]) == 0
    y, rate = sf.read(out, dtype="float64", always_2d=True)
    info = sf.info(str(out))
    assert rate == RATE and info.subtype == "FLOAT" and y.shape == x.shape
    want = scipy.signal.lfilter(taps, 1.0, x.astype(np.float64), axis=0)
    assert np.max(np.abs(y - want)) <= 1e-5 * np.max(np.abs(want))


def test_replay_in_a_subprocess(
    tmp_path: Path, taps_config: tuple[Path, np.ndarray], cli_env: dict[str, str]
) -> None:
    cfg, taps = taps_config
    x = write_wav(tmp_path / "in.wav", 2, 20000)
    out = tmp_path / "out.wav"
    proc = subprocess.run(
        [
            *STREAMER,
            "replay",
            str(tmp_path / "in.wav"),
            "--config",
            str(cfg),
            "--output",
            str(out),
            "--block",
            "512",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deadline misses" in proc.stderr and "algorithmic latency" in proc.stderr
    y, _ = sf.read(out, always_2d=True)
    want = scipy.signal.lfilter(taps, 1.0, x.astype(np.float64), axis=0)
    assert np.max(np.abs(y - want)) <= 1e-5 * np.max(np.abs(want))


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAMER, *argv], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    good = tmp_path / "in.wav"
    write_wav(good, 1, 1000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3)
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[pipeline]\nblock = -1\n")
    unknown_stage = tmp_path / "unknown.toml"
    unknown_stage.write_text('[[stages]]\nkind = "reverb"\n')
    cases = [
        (["replay", str(tmp_path / "missing.wav")], r"missing\.wav: no such file"),
        (["replay", str(corrupt)], r"corrupt\.wav: "),
        (["replay", str(good), "--config", str(bad_cfg)], r"bad\.toml: pipeline\.block: "),
        (
            ["replay", str(good), "--config", str(unknown_stage)],
            r"unknown\.toml: stages\[0\]: unknown kind 'reverb'",
        ),
        (["run", str(tmp_path / "nope.toml")], r"nope\.toml: no such file"),
        (["replay", str(good), "--block", "0"], r"--block: 0 must be at least 1"),
    ]
    for argv, pattern in cases:
        proc = run_cli(argv, cli_env)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert re.search(pattern, one_line(proc.stderr.splitlines()[-1])), proc.stderr


# ------------------------------------------------------------------ the daemon


class Daemon:
    """`streamer run` in a subprocess, publishing on ``endpoint``."""

    def __init__(self, endpoint: str, env: dict[str, str], *argv: str, **overrides: str):
        env = {**env, "STREAMER__PUBLISH__ENDPOINT": endpoint, **overrides}
        self.proc = subprocess.Popen(
            [*STREAMER, "run", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def receive(endpoint: str, prefix: str, count: int, deadline_s: float = 20) -> list[Any]:
    """Subscribe and collect ``count`` decoded messages, polling with a deadline (no sleeps)."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    messages = []
    deadline = time.monotonic() + deadline_s
    try:
        while len(messages) < count:
            left_ms = int((deadline - time.monotonic()) * 1000)
            assert left_ms > 0 and sock.poll(left_ms), f"got {len(messages)} of {count}"
            messages.append(decode(sock.recv_multipart()))
    finally:
        sock.close()
    return messages


def test_daemon_publishes_exact_audio_and_metrics(endpoint: str, cli_env: dict[str, str]) -> None:
    daemon = Daemon(endpoint, cli_env)
    try:
        messages = receive(endpoint, "", 400)
        code, err = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0, err
    audio = [m for m in messages if m.kind == "audio"]
    metrics = [m for m in messages if m.kind == "metrics"]
    assert len(audio) > 100 and len(metrics) > 100
    for group in (audio, metrics):
        seq = [m.header["seq"] for m in group]
        assert seq == list(range(seq[0], seq[0] + len(seq))), "seq has gaps"
    offline = offline_default_output((audio[-1].header["t0"] + 256) / 48000 + 0.1)
    for m in audio:
        t0 = m.header["t0"]
        assert m.array is not None and m.array.shape == (1, 256)
        np.testing.assert_allclose(m.array, offline[:, t0 : t0 + 256], atol=2e-6, rtol=0)
    last = metrics[-1].header
    assert set(last["stages_ns"]) == {"fir", "anomaly"}
    assert last["processing_ns"] > 0 and last["end_to_end_ns"] >= last["processing_ns"]
    assert last["period_ns"] == 256 * 10**9 // 48000
    assert "blocks" in err  # the summary


def test_subscribe_command_prints_json_lines(endpoint: str, cli_env: dict[str, str]) -> None:
    daemon = Daemon(endpoint, cli_env, STREAMER__PIPELINE__STATUS_INTERVAL_S="0.2")
    try:
        proc = run_cli(
            [
                "subscribe",
                "--endpoint",
                endpoint,
                "--topic",
                "audio/",
                "--count",
                "30",
                "--timeout",
                "20",
            ],
            cli_env,
        )
        status = receive(endpoint, "status/", 2)
    finally:
        daemon.kill()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 30
    assert all(line["topic"] == "audio/main" for line in lines)
    seq = [line["header"]["seq"] for line in lines]
    assert seq == list(range(seq[0], seq[0] + 30))
    assert lines[0]["array"]["shape"] == [1, 256]
    assert 0 < lines[0]["end_to_end_ms"] < 1000
    assert status[1].header["seq"] == status[0].header["seq"] + 1
    assert status[1].header["blocks"] > 0
    assert status[1].header["algorithmic_latency_samples"] == 256 + 255
    assert 0 < status[1].header["cpu_per_signal_s"] < 1


def test_subscribe_times_out_without_a_publisher(endpoint: str, cli_env: dict[str, str]) -> None:
    proc = run_cli(["subscribe", "--endpoint", endpoint, "--timeout", "0.3"], cli_env)
    assert proc.returncode == 1 and "no message" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_stops_gracefully_and_finalises_its_wav(
    tmp_path: Path, endpoint: str, cli_env: dict[str, str], sig: int
) -> None:
    out = tmp_path / "rec.wav"
    daemon = Daemon(endpoint, cli_env, STREAMER__OUTPUT__WAV=str(out))
    try:
        receive(endpoint, "audio/", 20)
        code, err = daemon.stop(sig)
    finally:
        daemon.kill()
    assert code == 0, err
    y, rate = sf.read(out, always_2d=True)
    assert rate == 48000 and y.shape[1] == 1
    assert y.shape[0] >= 20 * 256 and y.shape[0] % 256 == 0


def test_daemon_refuses_a_busy_endpoint(endpoint: str, cli_env: dict[str, str]) -> None:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind(endpoint)
    try:
        proc = run_cli(["run"], {**cli_env, "STREAMER__PUBLISH__ENDPOINT": endpoint})
    finally:
        sock.close(linger=0)
    assert proc.returncode == 2
    assert "publish.endpoint: cannot bind" in one_line(proc.stderr)


@pytest.mark.slow
def test_live_anomaly_onsets_reach_a_subscriber_within_50_ms_of_detection(
    endpoint: str, cli_env: dict[str, str]
) -> None:
    """config/anomaly.toml live (synth at real-time pace, anomalies every 4 s): each onset's
    age when a subscriber in this process holds it, from the moment its deciding frame
    ended (``detected_s``), by the monotonic clock the daemon stamps blocks with."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, "anomaly/")
    sock.connect(endpoint)
    cfg = str(REPO / "config" / "anomaly.toml")
    daemon = Daemon(endpoint, cli_env, cfg, STREAMER__SOURCE__ANOMALY_PERIOD_S="4")
    ages_ms: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while len(ages_ms) < 5:
            left_ms = int((deadline - time.monotonic()) * 1000)
            assert left_ms > 0 and sock.poll(left_ms), f"{len(ages_ms)} onsets in 30 s"
            frames = sock.recv_multipart()
            held_ns = time.monotonic_ns()
            h = decode(frames).header
            if h["state"] != "onset":
                continue
            # captured_ns is the carrying block's last sample; the detection came earlier.
            block_end_s = (h["t0"] + 256) / h["rate"]
            detected_ns = h["captured_ns"] - (block_end_s - h["detected_s"]) * 1e9
            ages_ms.append((held_ns - detected_ns) / 1e6)
        code, err = daemon.stop()
    finally:
        daemon.kill()
        sock.close()
    assert code == 0, err
    print(f"onset ages at the subscriber, ms: {[round(a, 2) for a in ages_ms]}")
    assert max(ages_ms) <= 50.0, ages_ms


def test_run_ends_with_a_non_looping_file(
    tmp_path: Path, endpoint: str, cli_env: dict[str, str]
) -> None:
    write_wav(tmp_path / "in.wav", 1, 3000)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[source]\nkind = "file"\npath = "in.wav"\n')
    proc = run_cli(["run", str(cfg)], {**cli_env, "STREAMER__PUBLISH__ENDPOINT": endpoint})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_replay_leaves_a_valid_prefix(
    tmp_path: Path, taps_config: tuple[Path, np.ndarray], cli_env: dict[str, str], sig: int
) -> None:
    cfg, taps = taps_config
    x = write_wav(tmp_path / "in.wav", 2, 10 * RATE)  # 10 s, replayed at real-time pace
    out = tmp_path / "out.wav"
    proc = subprocess.Popen(
        [
            *STREAMER,
            "replay",
            str(tmp_path / "in.wav"),
            "--config",
            str(cfg),
            "--output",
            str(out),
            "--block",
            "400",
            "--realtime",
        ],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            not out.exists() or out.stat().st_size < 44 + 8 * 4000
        ) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    y, rate = sf.read(out, always_2d=True)
    assert rate == RATE and 4000 <= y.shape[0] < x.shape[0] and y.shape[0] % 400 == 0
    want = scipy.signal.lfilter(taps, 1.0, x[: y.shape[0]].astype(np.float64), axis=0)
    assert np.max(np.abs(y - want)) <= 1e-5 * np.max(np.abs(want))


def test_sighup_reloads_stages_without_interrupting_the_stream(
    tmp_path: Path, endpoint: str, cli_env: dict[str, str]
) -> None:
    cfg = tmp_path / "live.toml"
    head = f'[pipeline]\nheartbeat_s = 0.2\n[publish]\nendpoint = "{endpoint}"\n'
    fir = '[[stages]]\nkind = "fir"\nname = "{}"\ndesign = "lowpass"\ncutoff_hz = 2000.0\n'
    cfg.write_text(head + fir.format("first"))
    collector = Collector(endpoint)
    proc = subprocess.Popen(
        [*STREAMER, "run", str(cfg)], env=cli_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def stages_now() -> set[str]:
        status = collector.of("status")
        return set(status[-1].header["stages_ms"]) if status else set()

    try:
        collector.wait_for("the first chain", lambda: stages_now() == {"first"})
        cfg.write_text(head + fir.format("second"))
        proc.send_signal(signal.SIGHUP)
        collector.wait_for("the reloaded chain", lambda: stages_now() == {"second"})
        cfg.write_text(head + '[[stages]]\nkind = "fir"\nnumtaps = 0\n')
        proc.send_signal(signal.SIGHUP)
        n_status = len(collector.of("status"))
        collector.wait_for("more heartbeats", lambda: len(collector.of("status")) > n_status + 3)
        assert stages_now() == {"second"}, "a refused config must leave the chain alone"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
    assert proc.returncode == 0, err
    assert "reloaded" in err and "reload refused" in err and "stages[0].numtaps" in err
    seq = [m.header["seq"] for m in collector.of("audio")]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "the stream was interrupted"


def test_prometheus_endpoint_serves_the_pipeline_metrics(
    tmp_path: Path, endpoint: str, cli_env: dict[str, str]
) -> None:
    import urllib.request

    from .conftest import free_tcp_endpoint

    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    env = {
        **cli_env,
        "STREAMER__PUBLISH__ENDPOINT": endpoint,
        "STREAMER__PROMETHEUS__ENABLED": "true",
        "STREAMER__PROMETHEUS__PORT": str(port),
    }
    proc = subprocess.Popen(
        [*STREAMER, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        receive(endpoint, "audio/", 50)  # running, and past 50 blocks
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['streamer_blocks_total{stream="main"}'] >= 50
    assert values['streamer_dropped_blocks_total{stream="main"}'] == 0
    count = values['streamer_processing_seconds_count{stream="main"}']
    assert count >= 50
    assert values['streamer_processing_seconds_bucket{le="+Inf",stream="main"}'] == count
    assert values['streamer_processing_seconds_bucket{le="0.1",stream="main"}'] <= count
    assert 'streamer_stage_seconds_count{stage="fir",stream="main"}' in values
    assert values['streamer_algorithmic_latency_seconds{stream="main"}'] == pytest.approx(
        511 / 48000
    )


def test_replay_of_sensor_data_takes_its_rate_on_the_command_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    data = np.random.default_rng(2).standard_normal((5000, 3)).astype(np.float32)
    np.save(tmp_path / "accel.npy", data)
    out = tmp_path / "out.wav"
    missing = run_cli(["replay", str(tmp_path / "accel.npy")], cli_env)
    assert missing.returncode == 2 and "source.rate: is required for .npy" in missing.stderr
    cfg = tmp_path / "hp.toml"
    cfg.write_text(
        '[[stages]]\nkind = "fir"\ndesign = "highpass"\ncutoff_hz = 20.0\nnumtaps = 301\n'
    )
    proc = run_cli(
        ["replay", str(tmp_path / "accel.npy"), "--rate", "10000", "--config", str(cfg),
         "--output", str(out)],
        cli_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    y, rate = sf.read(out, always_2d=True)
    assert rate == 10000 and y.shape == data.shape


def test_replay_of_a_csv_with_uneven_time_column_exits_2_naming_file_and_row(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    rows = [f"{i / 1000:.3f},{i % 7}" for i in range(3000)]
    rows[2500] = "2.5004,0"
    (tmp_path / "accel.csv").write_text("t,x\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "timed.toml"
    cfg.write_text('stages = []\n[source]\nkind = "file"\ntime_column = "t"\n')
    proc = run_cli(["replay", str(tmp_path / "accel.csv"), "--config", str(cfg)], cli_env)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert re.search(r"accel\.csv: row 2501 \(line 2502\): time 2\.5004 is not evenly", line)
