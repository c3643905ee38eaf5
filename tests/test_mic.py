"""The mic source on a real (virtual) microphone: tones in order, speech, no overflows, and a
device that vanishes and comes back. Needs PulseAudio (installed by .ci/run); marked ``mic``."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.wire import Message

from .conftest import STREAMER
from .helpers.collector import Collector
from .helpers.vmic import VirtualMicrophone, available

pytestmark = [
    pytest.mark.mic,
    pytest.mark.skipif(available() is not None, reason=f"no virtual microphone: {available()}"),
]

RATE = 48000
TONES_HZ = (600.0, 1800.0, 4200.0)


@pytest.fixture
def vmic(tmp_path: Path) -> Iterator[VirtualMicrophone]:
    mic = VirtualMicrophone(tmp_path / "xdg")
    mic.start()
    try:
        yield mic
    finally:
        mic.stop()


def start_daemon(tmp_path: Path, mic: VirtualMicrophone, endpoint: str) -> subprocess.Popen[str]:
    cfg = tmp_path / "mic.toml"
    cfg.write_text(
        'stream = "mic"\nstages = []\n[source]\nkind = "mic"\nrate = 48000\n'
        "stall_timeout_s = 1.0\nretry_initial_s = 0.2\nretry_max_s = 1.0\n"
        f'[pipeline]\nblock = 256\nheartbeat_s = 0.2\n[publish]\nendpoint = "{endpoint}"\n'
    )
    return subprocess.Popen(
        [*STREAMER, "run", str(cfg)], env={**mic.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def stop_daemon(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def tone_sequence(path: Path) -> None:
    t = np.arange(int(0.5 * RATE)) / RATE
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    parts = [0.25 * np.sin(2 * np.pi * f * t) * fade for f in TONES_HZ]
    silence = np.zeros(int(0.2 * RATE))
    sf.write(path, np.concatenate([silence, *parts, silence]).astype(np.float32), RATE)


def dominant_sequence(audio: np.ndarray) -> list[float]:
    """The tones heard, in order: the loudest bin of each 20 ms frame, repeats merged."""
    frame = 960
    heard: list[float] = []
    floor = 0.05
    for start in range(0, audio.size - frame, frame):
        chunk = audio[start : start + frame] * np.hanning(frame)
        if np.sqrt(np.mean(chunk**2)) < floor:
            continue
        spectrum = np.abs(np.fft.rfft(chunk))
        peak = float(np.argmax(spectrum) * RATE / frame)
        tone = min(TONES_HZ, key=lambda f: abs(f - peak))
        if abs(tone - peak) <= 0.05 * tone and (not heard or heard[-1] != tone):
            heard.append(tone)
    return heard


def contiguous_audio(messages: list[Message]) -> np.ndarray:
    seq = [m.header["seq"] for m in messages]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "audio seq has gaps"
    return np.concatenate([m.array[0] for m in messages if m.array is not None])


def test_tones_and_speech_arrive_in_order(tmp_path: Path, vmic: VirtualMicrophone) -> None:
    from .conftest import free_tcp_endpoint

    endpoint = free_tcp_endpoint()
    collector = Collector(endpoint)
    proc = start_daemon(tmp_path, vmic, endpoint)
    try:
        collector.wait_for("audio", lambda: len(collector.of("audio")) > 20)
        tone_sequence(tmp_path / "tones.wav")
        vmic.play(tmp_path / "tones.wav")
        if shutil.which("espeak-ng"):
            speech = tmp_path / "speech.wav"
            subprocess.run(["espeak-ng", "-w", str(speech), "testing one two three"], check=True)
            vmic.play(speech)
        collector.wait_for("a heartbeat", lambda: len(collector.of("status")) > 3)
        err = stop_daemon(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
    audio = contiguous_audio(collector.of("audio"))
    # The tones first, in order (the speech after them may add its own formant peaks).
    assert dominant_sequence(audio)[:3] == list(TONES_HZ), err
    if shutil.which("espeak-ng"):
        tail = audio[-RATE * 3 :]
        assert np.sqrt(np.mean(tail**2)) > 1e-3, "no speech arrived"
    status = collector.of("status")[-1].header
    assert status["source"]["state"] == "running"
    assert status["source"]["input_overflows"] == 0
    assert status["dropped_blocks"] == 0
    e2e_ms = [m.header["end_to_end_ns"] / 1e6 for m in collector.of("metrics")]
    p50, p99 = np.percentile(e2e_ms, [50, 99])
    print(f"virtual mic end-to-end to publication: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert 0 < p50 < 100


def test_device_loss_is_survived_and_reported(tmp_path: Path, vmic: VirtualMicrophone) -> None:
    from .conftest import free_tcp_endpoint

    endpoint = free_tcp_endpoint()
    collector = Collector(endpoint)
    proc = start_daemon(tmp_path, vmic, endpoint)
    try:
        collector.wait_for("audio", lambda: len(collector.of("audio")) > 20)
        vmic.stop()  # unplug
        collector.wait_for(
            "the loss on status/",
            lambda: any(m.header["source"]["device_losses"] >= 1 for m in collector.of("status")),
        )
        before = len(collector.of("audio"))
        vmic.start()  # plug back
        collector.wait_for("audio again", lambda: len(collector.of("audio")) > before + 50)
        collector.wait_for(
            "the reopen on status/",
            lambda: collector.of("status")[-1].header["source"]["reopens"] >= 1,
        )
        err = stop_daemon(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
    audio = collector.of("audio")
    # For a failure's message: the daemon's log and what was heard around the gap.
    heard = [
        (m.kind, m.header["t0"] if m.kind == "audio" else m.header["source"]["lost_frames"])
        for m in collector.messages
        if m.kind in ("audio", "status")
    ]
    trace = f"{err}\n(kind, t0 or lost_frames): {heard}"
    seq = [m.header["seq"] for m in audio]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "seq must continue across the loss"
    t0 = np.array([m.header["t0"] for m in audio])
    jumps = np.diff(t0)
    assert (jumps == 256).sum() == len(jumps) - 1, f"not exactly one gap: {trace}"
    gap = int(jumps.max())
    # The first status after the first block past the gap: it counts every loss that made
    # the gap (the restarted sound server may stall a freshly reopened stream once more),
    # and none after it (a loss takes seconds to declare).
    after_gap = audio[int(np.argmax(jumps)) + 1]
    start = next(i for i, m in enumerate(collector.messages) if m is after_gap)
    later = collector.messages[start:]
    status = next(m.header["source"] for m in later if m.kind == "status")
    assert status["lost_frames"] == gap - 256 and gap > RATE // 2, trace
    assert status["state"] == "running"


def test_missing_device_is_a_one_line_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cfg = tmp_path / "mic.toml"
    cfg.write_text('[source]\nkind = "mic"\ndevice = "no-such-device-here"\n')
    proc = subprocess.run(
        [*STREAMER, "run", str(cfg)], capture_output=True, text=True, env=cli_env, timeout=30,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "no-such-device-here" in lines[0] or "no audio input device" in lines[0]


def test_monitor_output_plays_the_processed_audio(tmp_path: Path, vmic: VirtualMicrophone) -> None:
    """Synth tones through the daemon to the speaker, recorded off the sink's monitor."""
    from .conftest import free_tcp_endpoint

    endpoint = free_tcp_endpoint()
    cfg = tmp_path / "monitor.toml"
    cfg.write_text(
        'stages = []\n[source]\nkind = "synth"\ntones_hz = [440.0, 1250.0]\n'
        "speech_bursts = false\nanomalies = false\nhum_hz = 50.0\nnoise_level_db = -70.0\n"
        "[output]\nmonitor = true\n[pipeline]\nheartbeat_s = 0.2\n"
        f'[publish]\nendpoint = "{endpoint}"\n'
    )
    collector = Collector(endpoint)
    proc = subprocess.Popen(
        [*STREAMER, "run", str(cfg)], env={**vmic.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        collector.wait_for("audio", lambda: len(collector.of("audio")) > 50)
        recorded = vmic.record(seconds=2.0)
        # The output stream takes one to a few seconds to start (PortAudio through ALSA's
        # pulse plugin), and what arrives meanwhile is dropped (counted); once it plays,
        # nothing more is lost: a second of heartbeats without a new drop.
        collector.wait_for("the monitor to play without drops", lambda: monitor_settled(collector))
        err = stop_daemon(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
    assert recorded.size > RATE, err  # parec takes a moment to start
    spectrum = np.abs(np.fft.rfft(recorded * np.hanning(recorded.size)))
    freqs = np.fft.rfftfreq(recorded.size, 1 / RATE)
    peaks = sorted(freqs[np.argsort(spectrum)[-40:]])
    for tone in (440.0, 1250.0):
        assert any(abs(f - tone) < 3 for f in peaks), (tone, peaks)


def monitor_settled(collector: Collector) -> bool:
    """The last six heartbeats (a second apart at 0.2 s) count the same monitor drops."""
    drops = {m.header["sink_drops"]["monitor"] for m in collector.of("status")[-6:]}
    return len(collector.of("status")) >= 6 and len(drops) == 1
