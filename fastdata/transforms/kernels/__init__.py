"""Kernels under the transforms, and the one place that chooses a backend.

Three implementations share one signature per kernel and write into caller-owned memory:

- :mod:`.reference`: NumPy float64, the definition the others are tested against;
- :mod:`.cpu`: Numba ``@njit(nogil=True)`` (the batch kernel also ``parallel=True``);
- :mod:`.gpu`: torch ops that run on any device.

The per-sample stage (resampling into a uint8 slot) always runs on the CPU, next to the
decoder. The batch stage (dtype conversion and normalisation) runs where the batch is:
:func:`select_backend` decides, from the device alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Backend", "select_backend", "normalize_lut", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# NOTE [ Parallel kernel lock ]
# Numba's "omp" threading layer accepts concurrent parallel launches, but its fallback
# "workqueue" layer aborts the process when two threads launch a parallel kernel at once.
# The batch kernel already uses every core, so serialising its launches costs nothing.
_PARALLEL_LOCK = threading.Lock()

# NOTE [ Fork-safe threading layer ]
# With GNU OpenMP (the "omp" layer Numba picks when torch has loaded libgomp), Numba kills
# any process forked after a parallel kernel ran ("fork() called from a process already
# using GNU OpenMP"): every later torch DataLoader with worker processes would die. So,
# unless the user chose a layer (NUMBA_THREADING_LAYER), the first launch of a parallel
# kernel selects "workqueue", which is fork-safe; its one limit, no concurrent launches,
# is what the lock above provides. The kernel is memory-bound, so the layer does not
# change its speed.
_layer_chosen = False


def _choose_threading_layer() -> None:
    global _layer_chosen
    if not _layer_chosen:
        import os

        import numba

        if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER = "workqueue"
        _layer_chosen = True


@dataclass(frozen=True)
class Backend:
    """A batch-stage implementation.

    Attributes:
        name: ``"numba"`` or ``"torch"``.
        normalize_into: ``(src uint8 NHWC, lut (C, 256), out NCHW tensor) -> None``.
    """

    name: str
    normalize_into: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy()


def _numba_normalize_into(src: torch.Tensor, lut: torch.Tensor, out: torch.Tensor) -> None:
    from fastdata.transforms.kernels import cpu

    s, table = src.numpy(), _numpy_view(lut)
    if out.is_contiguous():
        kernel, dst = cpu.normalize_nchw, _numpy_view(out)
    elif out.is_contiguous(memory_format=torch.channels_last):
        kernel, dst = cpu.normalize_nhwc, _numpy_view(out.permute(0, 2, 3, 1))
    else:
        raise ValueError("out must be contiguous or channels-last")
    with _PARALLEL_LOCK:
        _choose_threading_layer()
        kernel(s, table, dst)


def _torch_normalize_into(src: torch.Tensor, lut: torch.Tensor, out: torch.Tensor) -> None:
    from fastdata.transforms.kernels import gpu

    gpu.normalize_into(src, lut, out)


NUMBA = Backend("numba", _numba_normalize_into)
TORCH = Backend("torch", _torch_normalize_into)


def select_backend(device: torch.device | str | None) -> Backend:
    """Choose the batch-stage backend for a device: Numba on the CPU, torch elsewhere.

    Args:
        device: where the batch lives (``None`` means the CPU).
    """
    dev = torch.device("cpu" if device is None else device)
    return NUMBA if dev.type == "cpu" else TORCH


def normalize_lut(mean, std, channels: int, dtype: torch.dtype, scale: bool = True) -> torch.Tensor:
    """The ``(channels, 256)`` table of ``(v / 255 - mean) / std`` rounded once to ``dtype``.

    With ``scale=False`` the table holds ``(v - mean) / std`` (torchvision's
    ``ToDtype(dtype, scale=False)`` followed by ``Normalize``).

    float32/float16/float64 are rounded from float64 by NumPy (round to nearest even);
    bfloat16 by torch (float64 -> float32 -> bfloat16, each round to nearest even).

    Raises:
        ValueError: mean/std do not have 1 or ``channels`` entries, or std has a zero.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported output dtype {dtype}; use one of {SUPPORTED_DTYPES}")
    m, s = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
    if m.size not in (1, channels) or s.size not in (1, channels):
        raise ValueError(f"mean and std need 1 or {channels} values, got {mean!r} and {std!r}")
    if np.any(s == 0):
        raise ValueError(f"std must be non-zero, got {std!r}")
    m = np.broadcast_to(m, (channels,)).reshape(channels, 1)
    s = np.broadcast_to(s, (channels,)).reshape(channels, 1)
    v = np.arange(256, dtype=np.float64)[None, :]
    values = ((v / 255.0) if scale else v) - m
    values = values / s
    if dtype == torch.bfloat16:
        return torch.from_numpy(values).to(torch.bfloat16)
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}[
        dtype
    ]
    return torch.from_numpy(np.ascontiguousarray(values.astype(np_dtype)))
