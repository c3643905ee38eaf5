"""The FIR stage's torch backend: uniformly partitioned overlap-save on the CPU or a GPU.

The same zero-latency algorithm as `streamer.stages.convolution.PartitionedConvolver`
with one level (its docstring has the derivation): partitions of P frames, a
frequency-domain delay line of the last N - 1 input spectra, and the head partition
applied to the live input, so that a block of any size gets its exact outputs at
once. Every array lives on the backend's device; `process_tensor` filters a tensor
already there (nothing crosses the bus), `process` takes and fills numpy arrays.

Its place: many rows at once. A torch call costs ~5-10 us on the CPU and a kernel
launch as much on a GPU, whatever its size, so for one mono stream in small blocks
the numpy kernels are faster; with many streams and channels batched (and long
filters) the multiply-accumulate over the delay line dominates, which is what a GPU
does best.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from streamer.errors import BackendUnavailableError
from streamer.stages.convolution import (
    Level,
    Plan,
    Precision,
    _check_taps,
    _doubled,
    _partition_spectra,
)

__all__ = ["TorchPartitionedConvolver", "torch_device"]


def torch_device(name: str) -> torch.device:
    """The torch device ``"cpu"`` or ``"cuda"``; BackendUnavailableError if CUDA is absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device 'cuda' was asked for but torch {torch.__version__} sees no CUDA device"
        )
    return torch.device(name)


class TorchPartitionedConvolver:
    """Zero-latency uniformly partitioned overlap-save over a batch, in torch.

    Parameters
    ----------
    taps : ndarray of float64, shape (1, M) or (channels, M)
        One shared filter, or one per channel (broadcast over streams).
    plan : Plan
        A ``partitioned`` plan (one level, partition P = ``plan.fft_block``).
    streams, channels : int
        Batch shape; inputs are (streams, channels, frames).
    precision : {"float64", "float32"}, optional
        What the FFTs, spectra and delay line compute in. Default float64.
    device : torch.device, optional
        Where everything lives. Default the CPU.

    Notes
    -----
    State per row: the segment [x_{T-1} | the frames of partition T so far], the
    delay line of X_{T-1} .. X_{T-N+1} in a ring, and A_T = sum_{j>=1} H_j X_{T-j},
    computed when partition T starts. The ring's spectra are met by the numpy
    kernel's doubled copy of H, so the MAC is one product and one sum over a
    contiguous slice, never a rotation.
    """

    def __init__(
        self,
        taps: npt.NDArray[np.float64],
        plan: Plan,
        streams: int,
        channels: int,
        *,
        precision: Precision = "float64",
        device: torch.device | None = None,
    ) -> None:
        if plan.algorithm != "partitioned" or len(plan.levels) != 1:
            raise ValueError(f"the torch backend runs partitioned plans, not {plan.algorithm!r}")
        taps = _check_taps(taps, channels)
        self.plan = plan
        self.device = device or torch.device("cpu")
        self._real = torch.float64 if precision == "float64" else torch.float32
        cplx = torch.complex128 if precision == "float64" else torch.complex64
        p, n = plan.levels[0].size, plan.levels[0].count
        self._p, self._n = p, n
        k = n - 1

        def on_device(spectra: npt.NDArray[np.complexfloating[Any, Any]]) -> torch.Tensor:
            return torch.tensor(spectra, dtype=cplx, device=self.device)  # a copy

        # Partition 0's spectrum, and partitions 1..N-1 laid out for the ring (the numpy
        # kernel's `_doubled`): (rows, P + 1) and (2K - 1, 1, rows, P + 1).
        self._h0 = on_device(_partition_spectra(taps, Level(p, 1, 0), np.complex128)[0])
        self._tail_h = (
            on_device(_doubled(_partition_spectra(taps, Level(p, k, p), np.complex128)))
            if k else None
        )  # fmt: skip
        shape = (streams, channels)
        self._seg = torch.zeros(*shape, 2 * p, dtype=self._real, device=self.device)
        self._fdl = torch.zeros(k, *shape, p + 1, dtype=cplx, device=self.device)
        self._acc = torch.zeros(*shape, p + 1, dtype=cplx, device=self.device)
        # Every step's result has a buffer of its own, so a block allocates only its
        # output: the segment's spectrum, its product with H_0 plus A_T, the transform
        # back, and the delay line's products before their sum.
        self._spec = torch.zeros(*shape, p + 1, dtype=cplx, device=self.device)
        self._prod = torch.zeros_like(self._spec)
        self._conv = torch.zeros_like(self._seg)
        self._terms = torch.zeros_like(self._fdl)
        self.reset()

    def reset(self) -> None:
        """Forget all input, as if just built."""
        self._seg.zero_()
        self._fdl.zero_()
        self._acc.zero_()
        self._fill = 0  # frames of the current partition so far
        self._slot = 0  # ring slot of the newest spectrum

    def process(self, x: npt.NDArray[np.floating], out: npt.NDArray[np.floating]) -> None:
        """Filter numpy ``x`` (streams, channels, frames) into ``out`` (same shape)."""
        out[...] = self.process_tensor(self._on_device(x)).cpu().numpy()

    def process_block(self, x: npt.NDArray[np.floating] | torch.Tensor) -> torch.Tensor:
        """Filter one stream's block (channels, frames), numpy or a tensor: its float32
        output, a new tensor on the device (a batch of one stream, as the stage is)."""
        return self.process_tensor(self._on_device(x)[None], torch.float32)[0]

    def _on_device(self, x: npt.NDArray[np.floating] | torch.Tensor) -> torch.Tensor:
        """``x`` as a tensor on the device: numpy wrapped (no copy on the CPU), moved there."""
        tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        return tensor.to(self.device)

    def process_tensor(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Filter ``x`` (streams, channels, frames, any float dtype) on the device; returns a
        new tensor of ``dtype`` (default: the compute precision's)."""
        p, seg = self._p, self._seg
        spec, prod, conv = self._spec, self._prod, self._conv
        frames = x.shape[-1]
        out = torch.empty(x.shape, dtype=dtype or self._real, device=self.device)
        i = 0
        while i < frames:
            r = self._fill
            take = min(p - r, frames - i)
            end = r + take
            seg[..., p + r : p + end] = x[..., i : i + take]
            # [x_{T-1} | the frames of x_T so far | zeros]: the zeros stand for inputs whose
            # outputs are not emitted yet (a causal filter's output q needs none after q).
            if end < p:
                seg[..., p + end :] = 0.0
            torch.fft.rfft(seg, dim=-1, out=spec)
            torch.addcmul(self._acc, spec, self._h0, out=prod)
            torch.fft.irfft(prod, n=2 * p, dim=-1, out=conv)
            out[..., i : i + take] = conv[..., p + r : p + end]
            i += take
            self._fill = end
            if end == p:
                self._boundary(spec)
        return out

    def _boundary(self, spec: torch.Tensor) -> None:
        """Partition T is complete (``spec`` is X_T): push it, prepare A_{T+1}, slide."""
        k = self._n - 1
        if self._tail_h is not None:
            self._slot = (self._slot + 1) % k
            self._fdl[self._slot] = spec
            w = self._slot
            window = self._tail_h[k - 1 - w : 2 * k - 1 - w]
            torch.mul(window, self._fdl, out=self._terms)
            torch.sum(self._terms, dim=0, out=self._acc)
        seg, p = self._seg, self._p
        seg[..., :p] = seg[..., p:]
        self._fill = 0
