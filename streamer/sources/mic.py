"""The mic source: live input from PortAudio (sounddevice), surviving a device that vanishes.

The audio callback runs on PortAudio's thread and does three things only:
copy ``indata`` into a preallocated ring slot, stamp ``captured_ns``, and count
status flags. It never blocks, allocates, logs or raises; its first exception
is stored and raised as `DeviceError` by the thread reading blocks.

When audio stops arriving (the device was unplugged, the sound server died)
the source closes the stream, reports the loss, and reopens the device with a
doubling back-off. ``seq`` goes on where it stopped; ``t0`` jumps by the
samples lost while the device was away, so the gap is visible downstream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.block import Block, StreamLayout
from streamer.config import MicSourceConfig
from streamer.devices import find_device, import_sounddevice
from streamer.errors import DeviceError
from streamer.sources.base import NO_METADATA

__all__ = ["MicSource"]

log = logging.getLogger("streamer")

_RING_SLOTS = 64


class MicSource:
    """Blocks from a live input device, one PortAudio callback per block.

    Parameters
    ----------
    cfg : MicSourceConfig
        Device (index, part of a name, or the default), rate, channels, latency,
        and the stall and retry timings.
    stream : str
        Name of the stream, copied into every block.

    Raises
    ------
    DeviceError
        PortAudio is missing, or the device refuses the rate/channels.
    NoInputDeviceError
        No input device, or none matching ``cfg.device``.
    """

    live = True
    total_frames: int | None = None
    metadata = NO_METADATA

    def __init__(self, cfg: MicSourceConfig, stream: str):
        self._cfg = cfg
        self._stream_name = stream
        self._sd = import_sounddevice()
        self.layout = StreamLayout(cfg.channels, cfg.rate)
        self.device = self._open_check()
        self.counters: dict[str, int] = {
            "input_overflows": 0,
            "input_underflows": 0,
            "ring_overruns": 0,
            "device_losses": 0,
            "reopens": 0,
            "lost_frames": 0,
        }
        self.state = "closed"
        self._stream: Any = None
        self._error: BaseException | None = None
        self._ring: npt.NDArray[np.float32] = np.zeros((0, 0, 0), np.float32)
        self._ready: deque[tuple[int, int]] = deque()
        self._arrived = threading.Event()
        self._slot = 0

    def _open_check(self) -> int:
        sd = self._sd
        device = find_device(sd, self._cfg.device, "input")
        try:
            sd.check_input_settings(
                device=device,
                channels=self._cfg.channels,
                samplerate=self._cfg.rate,
                dtype="float32",
            )
        except Exception as exc:  # sounddevice raises PortAudioError or ValueError
            name = sd.query_devices(device)["name"]
            raise DeviceError(
                f"input device {device} ({name!r}) refuses {self._cfg.channels} channel(s) "
                f"at {self._cfg.rate} Hz: {exc}"
            ) from exc
        return device

    # ------------------------------------------------------------ callback

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy, stamp, count; nothing else."""
        try:
            now = time.monotonic_ns()
            if status.input_overflow:
                self.counters["input_overflows"] += 1
            if status.input_underflow:
                self.counters["input_underflows"] += 1
            if len(self._ready) >= _RING_SLOTS - 1:
                self.counters["ring_overruns"] += 1  # the reader fell a whole ring behind
                return
            slot = self._slot
            self._slot = (slot + 1) % _RING_SLOTS
            # COPY: indata is only valid during the callback.
            self._ring[slot, :frames] = indata
            # The ADC time of the first sample, mapped onto the monotonic clock, plus the
            # block's duration, is when its last sample was captured.
            captured = now
            lag_s = time_info.currentTime - time_info.inputBufferAdcTime
            if time_info.inputBufferAdcTime > 0 and 0 <= lag_s < 1:
                captured = min(
                    now, now - int(lag_s * 1e9) + frames * 1_000_000_000 // self._cfg.rate
                )
            self._ready.append((slot, captured))
            self._arrived.set()
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise self._sd.CallbackAbort from None

    # -------------------------------------------------------------- stream

    def _open(self, block_size: int) -> None:
        sd = self._sd
        self._ring = np.zeros((_RING_SLOTS, block_size, self._cfg.channels), np.float32)
        self._ready.clear()
        self._slot = 0
        self._stream = sd.InputStream(
            device=self.device,
            channels=self._cfg.channels,
            samplerate=self._cfg.rate,
            blocksize=block_size,
            dtype="float32",
            latency=self._cfg.latency,
            callback=self._callback,
        )
        self._stream.start()
        self.state = "running"

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # a stream on a vanished device may refuse to close
                log.warning("closing the input stream failed: %s", exc)

    def _reopen(self, block_size: int, stop: threading.Event) -> bool:
        """Reopen the device with a doubling back-off; False if stopped first."""
        wait_s = self._cfg.retry_initial_s
        while not stop.is_set():
            try:
                # PortAudio lists devices once per initialisation: start it afresh to
                # see a device that came back.
                self._sd._terminate()
                self._sd._initialize()
                self.device = self._open_check()
                self._open(block_size)
            except Exception as exc:
                self._close_stream()
                log.warning("input device not back (%s); next try in %.1f s", exc, wait_s)
                stop.wait(wait_s)
                wait_s = min(2 * wait_s, self._cfg.retry_max_s)
                continue
            log.info("input device %s reopened", self.device)
            return True
        return False

    def blocks(self, block_size: int, stop: threading.Event) -> Iterator[Block]:
        """Yield live blocks of ``block_size`` frames until ``stop`` is set.

        Raises
        ------
        DeviceError
            The callback raised (carried over from PortAudio's thread), or the
            device could not be opened at all.
        """
        rate = self._cfg.rate
        stall_s = self._cfg.stall_timeout_s + block_size / rate
        try:
            self._open(block_size)
        except Exception as exc:
            raise DeviceError(f"cannot open input device {self.device}: {exc}") from exc
        seq = t0 = 0
        last_ns = time.monotonic_ns()
        try:
            while not stop.is_set():
                if self._error is not None:
                    raise DeviceError(f"audio callback failed: {self._error!r}") from self._error
                if not self._ready:
                    self._arrived.clear()
                    if not self._ready and not self._arrived.wait(min(stall_s, 0.25)):
                        if (time.monotonic_ns() - last_ns) / 1e9 < stall_s:
                            continue
                        self._lost(stall_s)
                        if not self._reopen(block_size, stop):
                            return
                        # Samples that would have arrived while the device was away.
                        lost = round((time.monotonic_ns() - last_ns) * rate / 1e9)
                        lost -= lost % block_size
                        self.counters["lost_frames"] += lost
                        # After lost_frames: a status read in between never shows the
                        # reopen without the frames it lost.
                        self.counters["reopens"] += 1
                        t0 += lost
                        last_ns = time.monotonic_ns()
                    continue
                slot, captured_ns = self._ready.popleft()
                # COPY: out of the ring (which PortAudio refills) into the block's own buffer.
                samples = np.ascontiguousarray(self._ring[slot, :block_size].T)
                yield Block(samples, self._stream_name, seq, t0, rate, captured_ns)
                seq += 1
                t0 += block_size
                last_ns = captured_ns
        finally:
            self._close_stream()
            self.state = "closed"

    def _lost(self, stall_s: float) -> None:
        self.counters["device_losses"] += 1
        self.state = "lost"
        log.error("input device %s lost: no audio for %.1f s; reopening", self.device, stall_s)
        self._close_stream()

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "device": self.device, **self.counters}

    def close(self) -> None:
        self._close_stream()
