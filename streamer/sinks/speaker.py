"""Plays processed audio on an output device, for listening in, without ever holding up processing.

The processing thread copies each block into a ring buffer and returns; the
PortAudio output callback drains the ring. A full ring drops the new block (a
counted sink drop); an empty one plays silence (a counted underrun) and waits
for two blocks before playing again, so a stall is heard as a short gap
rather than as crackle. One writer and one reader share the ring through two
counters, so neither side ever takes a lock.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.block import Block, StreamLayout
from streamer.config import OutputConfig
from streamer.devices import find_device, import_sounddevice
from streamer.errors import DeviceError
from streamer.metrics import BlockTiming, StreamMetrics

__all__ = ["SpeakerMonitor"]

log = logging.getLogger("streamer")


class SpeakerMonitor:
    """A sink that plays blocks on an output device (``[output] monitor = true``).

    Raises
    ------
    DeviceError
        PortAudio is missing, or the output device refuses the stream's layout.
    NoInputDeviceError
        No output device matches ``monitor_device``.
    """

    name = "monitor"

    def __init__(self, cfg: OutputConfig, layout: StreamLayout, metrics: StreamMetrics, block: int):
        sd = import_sounddevice()
        self._metrics = metrics
        metrics.sink_drops.setdefault(self.name, 0)
        metrics.sink_underruns.setdefault(self.name, 0)
        capacity = cfg.monitor_buffer_blocks * block
        self._ring: npt.NDArray[np.float32] = np.zeros((capacity, layout.channels), np.float32)
        self._capacity = capacity
        self._prime = min(2 * block, capacity)
        self._written = 0  # frames ever written: only the processing thread moves it
        self._read = 0  # frames ever played: only the callback moves it
        self._priming = True
        device = find_device(sd, cfg.monitor_device, "output")
        try:
            self._stream: Any = sd.OutputStream(
                device=device,
                channels=layout.channels,
                samplerate=layout.rate,
                dtype="float32",
                latency="low",
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:  # PortAudioError or ValueError from sounddevice
            raise DeviceError(f"cannot open output device {device} for monitoring: {exc}") from exc
        log.info("monitoring on output device %s", device)

    def consume(self, block: Block, timing: BlockTiming) -> None:
        frames = block.frames
        free = self._capacity - (self._written - self._read)
        if frames > free:
            self._metrics.record_sink_drop(self.name)
            return
        start = self._written % self._capacity
        first = min(frames, self._capacity - start)
        # COPY: into the ring the output callback plays from (channels last, as PortAudio wants).
        self._ring[start : start + first] = block.samples[:, :first].T
        self._ring[: frames - first] = block.samples[:, first:].T
        self._written += frames

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy what is buffered, pad with silence, count; nothing else."""
        available = self._written - self._read
        if self._priming and available < self._prime:
            outdata.fill(0)
            return
        self._priming = False
        n = min(frames, available)
        start = self._read % self._capacity
        first = min(n, self._capacity - start)
        outdata[:first] = self._ring[start : start + first]
        outdata[first:n] = self._ring[: n - first]
        self._read += n
        if n < frames:
            outdata[n:] = 0
            self._priming = True
            self._metrics.record_sink_underrun(self.name)

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except Exception as exc:  # the device may have vanished
            log.warning("closing the monitor output failed: %s", exc)
