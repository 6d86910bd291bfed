"""Torch batch kernel: uint8 NHWC batch to normalised float NCHW / channels-last.

Runs on whatever device the tensors live on (CUDA after a uint8 transfer, or the CPU
device in tests). It uses the same lookup table as the Numba kernel (NOTE [ Normalisation
through a lookup table ] in :mod:`fastdata.transforms.kernels.cpu`), so both backends give
bit-identical numbers: the uint8 values become gather indices (value + 256 * channel) and
one ``index_select`` writes the output.
"""

from __future__ import annotations

import torch


def normalize_into(src: torch.Tensor, lut: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``lut[c, src[n, y, x, c]]`` into ``out``, shaped ``(N, C, H, W)``.

    Args:
        src: ``(N, H, W, C)`` uint8 tensor, contiguous.
        lut: ``(C, 256)`` table with ``out``'s dtype, on ``src``'s device.
        out: ``(N, C, H, W)`` tensor, either contiguous or channels-last; written completely.
    """
    n, h, w, c = src.shape
    offsets = torch.arange(c, device=src.device, dtype=torch.int32).mul_(256)
    table = lut.reshape(-1)
    if out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
        idx = src.to(torch.int32).add_(offsets)  # physical NHWC order
        torch.index_select(table, 0, idx.view(-1), out=out.permute(0, 2, 3, 1).reshape(-1))
        return
    if not out.is_contiguous():
        raise ValueError("out must be contiguous or channels-last")
    idx = torch.empty((n, c, h, w), dtype=torch.int32, device=src.device)
    idx.copy_(src.permute(0, 3, 1, 2)).add_(offsets.view(1, c, 1, 1))
    torch.index_select(table, 0, idx.view(-1), out=out.view(-1))
