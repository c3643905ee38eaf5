"""A real (virtual) microphone: a private PulseAudio, its null sink's monitor the default source.

What is played into the sink ``vspeaker`` (``paplay -d vspeaker``) arrives at the
default input, through PortAudio's ALSA back-end and ALSA's pulse plugin. Every
process that talks to the server needs the returned environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

SINK = "vspeaker"

_SCRIPT = f"""\
load-module module-native-protocol-unix
load-module module-null-sink sink_name={SINK} rate=48000 sink_properties=device.description={SINK}
load-module module-remap-source source_name=vmic master={SINK}.monitor
set-default-source vmic
set-default-sink {SINK}
"""


def available() -> str | None:
    """None when a virtual microphone can be made here, else what is missing."""
    tools = ("pulseaudio", "pactl", "paplay", "parec")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


class VirtualMicrophone:
    """Starts and stops the sound server; ``env`` is what clients need."""

    def __init__(self, runtime_dir: Path):
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.runtime_dir = runtime_dir
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
        (runtime_dir / "vmic.pa").write_text(_SCRIPT)

    def start(self, timeout_s: float = 10.0) -> None:
        subprocess.run(
            ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit", "-n",
             "-F", str(self.runtime_dir / "vmic.pa")],
            env=self.env, check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = subprocess.run(["pactl", "info"], env=self.env, capture_output=True, text=True)
            if info.returncode == 0 and "Default Source: vmic" in info.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PulseAudio did not come up: {info.stderr.strip()}")

    def stop(self) -> None:
        pid_file = self.runtime_dir / "pulse" / "pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def record(self, seconds: float) -> np.ndarray:
        """What reaches the virtual speaker for ``seconds``, as mono float32 at 48 kHz."""
        proc = subprocess.Popen(
            ["parec", "-d", f"{SINK}.monitor", "--raw", "--format=float32le", "--rate=48000",
             "--channels=1", "--latency-msec=20"],
            env=self.env, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, _ = proc.communicate()
        return np.frombuffer(out[: len(out) // 4 * 4], dtype="<f4")

    def play(self, wav: Path) -> None:
        """Play a file into the virtual speaker; returns when it has been played."""
        subprocess.run(["paplay", "-d", SINK, str(wav)], env=self.env, check=True, timeout=60)
