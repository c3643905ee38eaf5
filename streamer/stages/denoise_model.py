"""The learned denoiser: a small causal GRU that predicts one gain per perceptual band.

The plan is RNNoise's (Valin 2018): the network never sees bins, only the log
energies of ``bands`` triangular bands spaced on an ERB-like scale up to 8 kHz,
and it answers with one gain per band, which is interpolated back to every bin
with the same triangles. Interpolated gains are smooth across frequency, so the
output has no "musical noise" (isolated bins flickering), and the network stays
small (a few hundred kilobytes) and cheap (two GRU steps per 10 ms).

The bands are defined in hertz and the energies are normalised per hertz of a
continuous signal, so one model trained at 16 kHz serves any rate whose frames
are 20 ms (bins 50 Hz apart): at 48 kHz the bands below 8 kHz see the same
features, and the bins above 8 kHz take the top band's gain.

`DenoiserNet.forward` runs whole sequences (training, offline) and
`DenoiserNet.step` one frame at a time with explicit state (the stream); the two
are equal (tested). Weights are an .npz (no pickle) with a JSON card.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from streamer.stages.anomaly_model import model_path

__all__ = [
    "FORMAT",
    "BandLayout",
    "DenoiserNet",
    "load_denoiser",
    "log_band_energy",
    "save_denoiser",
]

F64 = npt.NDArray[np.float64]
FORMAT = "streamer-denoise-bandgru/1"
TOP_HZ = 8000.0
_EPS = 1e-10


def _warp(f: F64) -> F64:
    """The band scale: ERB-rate (Glasberg & Moore 1990) plus a linear term that keeps
    the lowest bands at least ~70 Hz (more than one 50 Hz bin) apart."""
    out: F64 = 21.4 * np.log10(1.0 + 0.00437 * f) + f / 100.0
    return out


@dataclass(frozen=True)
class BandLayout:
    """Triangular bands on the warped scale from 0 to `TOP_HZ`; partition of unity.

    Parameters
    ----------
    bands : int
        Band count (centres, the first at 0 Hz and the last at 8 kHz).
    """

    bands: int

    def centres(self) -> F64:
        grid = np.linspace(0.0, TOP_HZ, 80001)
        return np.interp(np.linspace(0.0, _warp(np.array(TOP_HZ)), self.bands), _warp(grid), grid)

    def weights(self, rate: float, n_fft: int) -> tuple[F64, F64]:
        """Band weights of each rfft bin for features and for gains.

        Returns
        -------
        analysis : ndarray of float64, shape (bins, bands)
            ``power @ analysis`` is each band's energy per hertz (bins above 8 kHz
            do not count), for any rate and frame length.
        synthesis : ndarray of float64, shape (bands, bins)
            ``gains @ synthesis`` is each bin's gain; bins above 8 kHz take the
            top band's.
        """
        freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
        c = self.centres()
        tri = np.zeros((freqs.size, self.bands))
        for b in range(self.bands):
            left = c[b - 1] if b > 0 else c[0] - 1.0
            right = c[b + 1] if b + 1 < self.bands else c[-1] + 1.0
            up = (freqs - left) / (c[b] - left)
            down = (right - freqs) / (right - c[b])
            tri[:, b] = np.clip(np.minimum(up, down), 0.0, 1.0)
        tri[freqs <= c[0], 0] = 1.0
        synthesis = tri.copy()
        synthesis[freqs >= c[-1], -1] = 1.0
        analysis = tri * (freqs <= TOP_HZ + 1e-6)[:, None]
        # Per hertz of bandwidth: divide by the bins' spacing-weighted count, so that
        # the same signal gives the same energies at any rate.
        analysis = analysis / (analysis.sum(axis=0, keepdims=True) * rate / n_fft)
        return analysis, synthesis.T.copy()


Features = TypeVar("Features", F64, torch.Tensor)


def log_band_energy(
    power: Features, analysis: Features, window_energy: float, rate: float
) -> Features:
    """The network's input features for power spectra (..., bins): scaled log energies.

    ``power`` is |rfft(window * x)|^2; dividing by the window's energy and the rate
    makes it a power spectral density, independent of the frame length and rate.
    numpy arrays (the stage) or torch tensors (training), the same numbers.
    """
    density = power @ analysis / (window_energy * rate)
    log10 = torch.log10 if isinstance(density, torch.Tensor) else np.log10
    out: Features = (log10(density + _EPS) + 6.0) / 2.0
    return out


class DenoiserNet(nn.Module):
    """Band features -> band gains: dense + tanh, a stack of GRUs, dense + sigmoid.

    Parameters
    ----------
    bands : int
        Features in and gains out per frame.
    hidden : int
        Units in the dense input layer and in each GRU.
    layers : int
        GRU layers.
    """

    def __init__(self, bands: int = 32, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.bands, self.hidden, self.layers = bands, hidden, layers
        self.inp = nn.Linear(bands, hidden)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden + bands, bands)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Zero GRU state for ``batch`` streams: (layers, batch, hidden)."""
        return torch.zeros(self.layers, batch, self.hidden, device=device)

    def forward(
        self, feats: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gains for a sequence: feats (batch, frames, bands) -> gains of the same shape, and
        the state after the last frame. Causal: frame t's gain depends on frames <= t."""
        h = torch.tanh(self.inp(feats))
        y, new_state = self.gru(h, state)
        gains = torch.sigmoid(self.out(torch.cat([y, feats], dim=-1)))
        return gains, new_state

    def step(
        self, feats: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame per stream: feats (batch, bands) -> gains (batch, bands), new state."""
        gains, new_state = self.forward(feats[:, None, :], state)
        return gains[:, 0, :], new_state


def save_denoiser(path: Path, net: DenoiserNet, card: dict[str, Any]) -> None:
    """Weights as float32 arrays plus the JSON card (format, sizes, framing, training)."""
    full = {"format": FORMAT, "bands": net.bands, "hidden": net.hidden, "layers": net.layers,
            **card}
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    np.savez_compressed(path, card=np.array(json.dumps(full)), **arrays)


def load_denoiser(
    name_or_path: str, base_dir: Path | None = None
) -> tuple[DenoiserNet, dict[str, Any]]:
    """A shipped model (``"denoise-speech"``) or a user's .npz, ready for inference (eval mode).

    Raises
    ------
    ValueError
        The file is missing, not an .npz of this format, or its arrays do not fit.
    """
    path = model_path(name_or_path, base_dir)
    try:
        with np.load(path, allow_pickle=False) as z:
            card = json.loads(str(z["card"]))
            arrays = {k: torch.from_numpy(z[k].copy()) for k in z.files if k != "card"}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read denoiser model {path}: {exc}") from exc
    if card.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} model (format {card.get('format')!r})")
    net = DenoiserNet(int(card["bands"]), int(card["hidden"]), int(card["layers"]))
    try:
        net.load_state_dict(arrays)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the card: {exc}") from exc
    net.eval()
    return net, card
