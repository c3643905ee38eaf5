"""Faults around the service: slow and vanishing subscribers, bad files, a full disk.

Each test states the fault and what the service must do about it (docs/faults.md
lists them all).
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from streamer.wire import decode

from .conftest import STREAMER, free_tcp_endpoint
from .helpers.collector import Collector


def cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAMER, *argv], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.fixture
def noise_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal((48000, 2))).astype(np.float32), 48000)
    return path


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs), where root may mount one."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_is_a_clear_failure(
    noise_wav: Path, small_disk: Path, cli_env: dict[str, str]
) -> None:
    """The disk fills while the output is written: exit 1, one line saying so."""
    out = small_disk / "out.wav"
    proc = cli(["replay", str(noise_wav), "--output", str(out)], cli_env)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last or "Errno 28" in last, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unwritable_output_is_refused_at_start(noise_wav: Path, cli_env: dict[str, str]) -> None:
    proc = cli(["replay", str(noise_wav), "--output", "/proc/nope/out.wav"], cli_env)
    assert proc.returncode == 2
    assert re.match(r"streamer: /proc/nope/out\.wav: cannot write", proc.stderr)


def test_truncated_wav_replays_what_it_holds(
    tmp_path: Path, noise_wav: Path, cli_env: dict[str, str]
) -> None:
    """A WAV cut short (its header promises more): what is there is processed, exit 0."""
    cut = tmp_path / "cut.wav"
    cut.write_bytes(noise_wav.read_bytes()[: 44 + 4 * 2 * 10000])
    out = tmp_path / "out.wav"
    proc = cli(["replay", str(cut), "--output", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    held = sf.info(str(cut)).frames
    assert 0 < held < sf.info(str(noise_wav)).frames
    assert sf.info(str(out)).frames == held


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("empty.wav", b"", r"empty\.wav: is empty"),
        ("text.wav", b"this is not audio at all\n" * 20, r"text\.wav: "),
        ("noise.flac", bytes(range(256)) * 8, r"noise\.flac: "),
    ],
)
def test_bad_audio_files_exit_2_with_one_line(
    tmp_path: Path, cli_env: dict[str, str], name: str, content: bytes, pattern: str
) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    proc = cli(["replay", str(bad)], cli_env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr


def test_mislabelled_audio_is_read_by_its_content(
    tmp_path: Path, noise_wav: Path, cli_env: dict[str, str]
) -> None:
    """A FLAC file named .wav: libsndfile reads the content, not the name."""
    data, rate = sf.read(noise_wav, dtype="float32")
    flac_named_wav = tmp_path / "really-flac.wav"
    sf.write(flac_named_wav, data, rate, format="FLAC")
    out = tmp_path / "out.wav"
    proc = cli(["replay", str(flac_named_wav), "--output", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(out)).frames == data.shape[0]


def test_a_stalled_subscriber_never_blocks_the_publisher(cli_env: dict[str, str]) -> None:
    """A subscriber that stops reading while audio is published flat out: the daemon
    finishes as if it were not there, and the subscriber, reading again, finds the gap."""
    endpoint = free_tcp_endpoint()
    env = {
        **cli_env,
        "STREAMER__PUBLISH__ENDPOINT": endpoint,
        "STREAMER__SOURCE__REALTIME": "false",
        "STREAMER__SOURCE__DURATION_S": "300",
        "STREAMER__PIPELINE__BLOCK": "4096",
        "STREAMER__PUBLISH__SNDHWM": "100",
        "STREAMER__STAGES": "[]",  # the publisher is under test: publish as fast as it can
    }
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt_string(zmq.SUBSCRIBE, "audio/")
    stalled.connect(endpoint)
    daemon = subprocess.Popen([*STREAMER, "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert stalled.poll(20_000), "nothing published"
        got = [decode(stalled.recv_multipart()).header["seq"]]
        time.sleep(1.0)  # the stall, while the daemon publishes on
        while daemon.poll() is None or stalled.poll(500):
            if stalled.poll(100):
                got.append(decode(stalled.recv_multipart()).header["seq"])
        _, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        stalled.close()
    assert daemon.returncode == 0, err
    assert "300.00 s of audio" in err and "dropped blocks: 0" in err
    assert len(got) < 300 * 48000 // 4096, "the stalled subscriber got everything"
    assert any(b - a > 1 for a, b in itertools.pairwise(got)), "no gap seen"


def test_a_killed_subscriber_does_not_disturb_the_daemon(cli_env: dict[str, str]) -> None:
    endpoint = free_tcp_endpoint()
    env = {**cli_env, "STREAMER__PUBLISH__ENDPOINT": endpoint,
           "STREAMER__PIPELINE__HEARTBEAT_S": "0.2"}  # fmt: skip
    watcher = Collector(endpoint)
    daemon = subprocess.Popen([*STREAMER, "run"], env=env, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(
        [*STREAMER, "subscribe", "--endpoint", endpoint], env=cli_env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert victim.stdout is not None
        victim.stdout.readline()  # it is receiving
        victim.kill()
        victim.wait()
        n = len(watcher.of("status"))
        watcher.wait_for("heartbeats after the kill", lambda: len(watcher.of("status")) > n + 5)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    finally:
        for proc in (daemon, victim):
            if proc.poll() is None:
                proc.kill()
        watcher.close()
    assert daemon.returncode == 0, err
    status = [m.header for m in watcher.of("status")]
    assert status[-1]["blocks"] > status[-6]["blocks"]
    seq = [m.header["seq"] for m in watcher.of("audio")]
    assert seq == list(range(seq[0], seq[0] + len(seq)))


def test_an_unread_log_never_stalls_the_heartbeat(cli_env: dict[str, str]) -> None:
    """stderr is a pipe nobody reads, filled by a status line every 10 ms: the heartbeat
    goes on, and the log lines wait in the writer's queue until the pipe is read."""
    endpoint = free_tcp_endpoint()
    env = {
        **cli_env,
        "STREAMER__PUBLISH__ENDPOINT": endpoint,
        "STREAMER__PIPELINE__STATUS_INTERVAL_S": "0.01",
        "STREAMER__PIPELINE__HEARTBEAT_S": "0.1",
    }
    watcher = Collector(endpoint)
    daemon = subprocess.Popen([*STREAMER, "run"], env=env, stderr=subprocess.PIPE)
    try:
        watcher.wait_for("heartbeats", lambda: len(watcher.of("status")) > 0)
        time.sleep(3)  # the pipe (64 KiB) fills within a second at this rate
        n = len(watcher.of("status"))
        watcher.wait_for("heartbeats with a full pipe", lambda: len(watcher.of("status")) > n + 10)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        watcher.close()
    assert daemon.returncode == 0
    lines = err.decode().splitlines()
    assert sum('"status":' in line for line in lines) > 200  # ~4 s of lines, none lost
    assert "dropped blocks: 0" in lines[-1]


def test_log_records_beyond_the_queue_are_counted() -> None:
    """The writer is stuck; the queue's capacity is exceeded: the excess is dropped and the
    count written once the writer can write again."""
    import io
    import logging
    import threading

    from streamer.logs import NonBlockingHandler

    gate = threading.Event()

    class Stuck(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            gate.wait()
            super().emit(record)

    out = io.StringIO()
    handler = NonBlockingHandler(Stuck(out), capacity=5)
    logger = logging.getLogger("streamer.test.nonblocking")
    logger.handlers[:] = [handler]
    logger.propagate = False
    start = time.monotonic()
    for i in range(50):
        logger.warning("line %d", i)
    assert time.monotonic() - start < 0.5  # never waited for the writer
    assert handler.dropped >= 40
    gate.set()
    handler.flush_and_stop()
    assert f"{handler.dropped} log records dropped" in out.getvalue()
