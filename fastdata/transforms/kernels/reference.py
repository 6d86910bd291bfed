"""Plain NumPy float64 reference of every kernel, written for clarity, not speed.

The compiled kernels (:mod:`.cpu`, :mod:`.gpu`) are tested against these functions on
fresh random inputs. The resampling reference builds dense ``(n_out, n_src)`` weight
matrices from the filter definition in NOTE [ Resampling tables ] (in
:mod:`fastdata.transforms.kernels.cpu`) and applies them as two matrix products.
"""

from __future__ import annotations

import numpy as np

_RADIUS = {0: 0.5, 1: 1.0, 2: 2.0}


def _filter(kind: int, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if kind == 1:
        return np.clip(1.0 - x, 0.0, None)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def axis_matrix(
    size: int,
    lo: float,
    length: float,
    n_resized: int,
    rows: np.ndarray,
    kind: int,
    antialias: bool,
) -> np.ndarray:
    """Dense float64 ``(len(rows), size)`` matrix of one output axis; fill rows are zero.

    Same arguments as :func:`fastdata.transforms.kernels.cpu.axis_tables`.
    """
    scale = length / n_resized
    stretch = scale if (antialias and scale > 1.0) else 1.0
    support = _RADIUS[kind] * stretch
    clip_lo, clip_hi = max(int(np.floor(lo)), 0), min(int(np.ceil(lo + length)), size)
    mat = np.zeros((len(rows), size))
    for o, r in enumerate(rows):
        if r < 0:
            continue
        if kind == 0:
            src = min(int(np.floor(np.float32(r) * np.float32(scale))), int(length) - 1)
            mat[o, min(max(clip_lo + src, 0), size - 1)] = 1.0
            continue
        center = lo + (r + 0.5) * scale
        taps = np.arange(
            max(int(center - support + 0.5), clip_lo), min(int(center + support + 0.5), clip_hi)
        )
        w = _filter(kind, (taps - center + 0.5) / stretch)
        if w.sum() != 0:
            mat[o, taps] = w / w.sum()
    return mat


def resample(
    src: np.ndarray, ymat: np.ndarray, xmat: np.ndarray, fill: np.ndarray, gain: float = 1.0
) -> np.ndarray:
    """Resample an HWC uint8 image with dense axis matrices; returns HWC uint8."""
    img = src.astype(np.float64)
    out = np.einsum("oy,yxc->oxc", ymat, img)
    out = np.einsum("px,oxc->opc", xmat, out)
    out = np.floor(np.clip(out * gain, 0.0, 255.0) + 0.5).astype(np.uint8)
    padded = (ymat.sum(1) == 0)[:, None] | (xmat.sum(1) == 0)[None, :]
    out[padded] = fill
    return out


def normalize(batch: np.ndarray, mean, std, dtype, channels_last: bool = False) -> np.ndarray:
    """``(x / 255 - mean) / std`` in float64, rounded once to ``dtype`` (a NumPy dtype).

    Args:
        batch: ``(N, H, W, C)`` uint8.
        mean: per-channel means in [0, 1] units.
        std: per-channel standard deviations in [0, 1] units.
        dtype: NumPy output dtype (float16, float32 or float64).
        channels_last: return ``(N, H, W, C)`` instead of ``(N, C, H, W)``.
    """
    x = (batch.astype(np.float64) / 255.0 - np.asarray(mean, np.float64)) / np.asarray(
        std, np.float64
    )
    x = x.astype(dtype)
    return x if channels_last else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
