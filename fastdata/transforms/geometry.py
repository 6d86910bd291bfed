"""Per-sample geometry: torchvision's size and sampling rules, and the crop/resize/flip algebra.

A :class:`Geometry` starts as "the whole source image" and is transformed symbolically
by each geometric transform of a pipeline, in order. Nothing touches pixels here: at the
end, :meth:`Geometry.axes` describes each output axis as a source region, a resize and a
``rows`` map (NOTE [ Resampling tables ] in :mod:`fastdata.transforms.kernels.cpu`), and
one resampling pass writes the output.

NOTE [ What one pass can express ]
Crops inside the image before the resize narrow the source region (a flip before them
mirrors the box instead); the single resize maps the region to its new size; crops
after the resize, with any padding mode, and flips, are index maps on the resized
pixels. This covers RandomResizedCrop, Resize -> CenterCrop, RandomCrop with padding,
and flips anywhere, exactly as torchvision computes them (a flip commutes with the
symmetric resampling filter). Two resizes, or padding before a resize, cannot be fused:
:class:`PlanError` is raised, and ``Compose`` then runs its transforms one at a time.
"""

from __future__ import annotations

import math

import numpy as np

from fastdata.errors import FastdataError

PAD_MODES = ("constant", "edge", "reflect", "symmetric")

# NOTE [ DCT scaling margin ]
# libjpeg's DCT scaling is a sharper low-pass than torchvision's antialiased triangle
# filter. Decoding at exactly the output scale (a 2x shrink done wholly by the DCT)
# differed from torchvision by more than 2/255 on 8-30% of values of real photographs;
# keeping at least a 2x shrink for our filter after the DCT scaling (so a 1/2 decode
# needs a 4x total shrink) kept every Resize(256) -> CenterCrop(224) value within 1/255
# and mostly within 2/255 at larger shrinks. The decoded image is therefore at least
# DCT_MARGIN times the size the resize needs.
DCT_MARGIN = 2.0


class PlanError(FastdataError):
    """A pipeline cannot be compiled into one per-sample pass (see NOTE [ What one pass can express ])."""


def resized_size(h: int, w: int, size: tuple[int, ...], max_size: int | None) -> tuple[int, int]:
    """torchvision's Resize output rule: ``size`` of length 1 is the shorter side (truncated long side)."""
    if len(size) == 2:
        return int(size[0]), int(size[1])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(size[0]), int(size[0] * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if w <= h else (new_short, new_long)


def rrc_box(h: int, w: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box ``(top, left, height, width)``, drawn from ``rng``.

    Ten attempts at an area fraction uniform in ``scale`` and a log-uniform aspect ratio,
    then the central crop fallback, as in ``RandomResizedCrop.make_params``.
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def center_offset(size: int, crop: int) -> int:
    """torchvision's CenterCrop anchor on one axis (negative: the crop pads)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


def pad_map(pos: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map positions on a padded axis to pixel indices in ``[0, size)``; -1 means fill."""
    if mode == "constant":
        return np.where((pos >= 0) & (pos < size), pos, -1)
    if mode == "edge":
        return np.clip(pos, 0, size - 1)
    if mode == "reflect":
        period = max(2 * size - 2, 1)
        p = np.mod(pos, period)
        return np.where(p < size, p, period - p)
    p = np.mod(pos, 2 * size)  # symmetric
    return np.where(p < size, p, 2 * size - 1 - p)


class Geometry:
    """The symbolic state of one sample's geometry (see the module docstring).

    Args:
        height: source image height.
        width: source image width.
    """

    def __init__(self, height: int, width: int) -> None:
        self.source = (int(height), int(width))
        self.lo = [0.0, 0.0]
        self.length = [float(height), float(width)]
        self.flipped = [False, False]
        self.rows: list[np.ndarray | None] = [None, None]
        self.resized: tuple[int, int] | None = None
        self.kind = 0
        self.antialias = True
        self.fill = (0, 0, 0)
        self.gain = 1.0

    def size(self) -> tuple[int, int]:
        """Current ``(height, width)`` of the virtual image."""
        return self._axis_size(0), self._axis_size(1)

    def _axis_size(self, a: int) -> int:
        rows = self.rows[a]
        if rows is not None:
            return len(rows)
        return self.resized[a] if self.resized is not None else int(round(self.length[a]))

    def _ensure_rows(self, a: int) -> np.ndarray:
        if self.rows[a] is None:
            rows = np.arange(self._axis_size(a), dtype=np.int32)
            self.rows[a] = rows[::-1].copy() if self.flipped[a] else rows
        return self.rows[a]

    def crop(
        self, offsets: tuple[int, int], sizes: tuple[int, int], mode: str = "constant", fill=None
    ) -> None:
        """Crop ``sizes`` pixels starting at ``offsets`` (may lie outside: padding by ``mode``)."""
        if fill is not None:
            self.fill = fill
        for a in (0, 1):
            off, n = int(offsets[a]), int(sizes[a])
            inside = off >= 0 and off + n <= self._axis_size(a)
            if inside and self.rows[a] is None and self.resized is None:
                span = self.length[a]
                self.lo[a] += (span - off - n) if self.flipped[a] else off
                self.length[a] = float(n)
                continue
            rows = self._ensure_rows(a)
            mapped = pad_map(np.arange(off, off + n), len(rows), mode)
            self.rows[a] = np.where(mapped >= 0, rows[np.maximum(mapped, 0)], -1).astype(np.int32)

    def resize(self, height: int, width: int, kind: int, antialias: bool) -> None:
        """Resize the current image to ``(height, width)``.

        Raises:
            PlanError: a resize already happened, or padding came before this resize.
        """
        if self.resized is not None or any(r is not None for r in self.rows):
            raise PlanError("a compiled pipeline can resize once, and pad only after its resize")
        self.resized = (int(height), int(width))
        self.kind, self.antialias = kind, bool(antialias)

    def flip(self, a: int) -> None:
        """Mirror the current image along axis ``a`` (0 vertical, 1 horizontal)."""
        if self.rows[a] is None and self.resized is None:
            self.flipped[a] = not self.flipped[a]
        else:
            self.rows[a] = self._ensure_rows(a)[::-1].copy()

    def reducible(self) -> tuple[int, int] | None:
        """Minimum decoded ``(height, width)`` for DCT scaling, or None (NOTE [ DCT scaling margin ])."""
        if self.resized is None or self.kind == 0 or not self.antialias:
            return None
        shrink = [self.length[a] / self.resized[a] for a in (0, 1)]
        if min(shrink) < 2.0 * DCT_MARGIN:
            return None
        return tuple(math.ceil(self.source[a] / shrink[a] * DCT_MARGIN) for a in (0, 1))

    def rescale(self, height: int, width: int) -> None:
        """Express the source region in a source decoded at ``(height, width)`` instead.

        libjpeg scales by ``M/8`` and rounds the size up, so the factor is ``M/8`` (found
        from the sizes), not ``height / source height``.
        """
        fits = [
            m
            for m in range(1, 17)
            if all(-(-self.source[a] * m // 8) == new for a, new in enumerate((height, width)))
        ]
        factors = [m / 8 for m in fits[:1]] or [height / self.source[0], width / self.source[1]]
        for a in (0, 1):
            f = factors[min(a, len(factors) - 1)]
            self.lo[a] *= f
            self.length[a] *= f
        self.source = (int(height), int(width))

    def axes(self) -> list[tuple[float, float, int, np.ndarray, int, bool]]:
        """Per axis: ``(lo, length, n_resized, rows, kind, antialias)`` for the kernels."""
        out = []
        for a in (0, 1):
            rows = self._ensure_rows(a)
            if self.resized is None:
                out.append((self.lo[a], self.length[a], int(round(self.length[a])), rows, 0, False))
            else:
                out.append(
                    (self.lo[a], self.length[a], self.resized[a], rows, self.kind, self.antialias)
                )
        return out
