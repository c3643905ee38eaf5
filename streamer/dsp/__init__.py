"""Signal-processing building blocks shared by stages: streaming STFT and its inverse, mel bands."""

from __future__ import annotations

from streamer.dsp.mel import mel_filterbank
from streamer.dsp.stft import StreamingISTFT, StreamingSTFT, frames, istft, wola_window

__all__ = [
    "StreamingISTFT",
    "StreamingSTFT",
    "frames",
    "istft",
    "mel_filterbank",
    "wola_window",
]
