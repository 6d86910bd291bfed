"""Batch kernels of the raw-pixel path: crop, pad, flip and normalise whole batches at once.

A pipeline whose per-sample steps are at most one ``RandomCrop`` (constant padding) or
``CenterCrop`` followed by ``RandomHorizontalFlip``/``RandomVerticalFlip`` is, on raw
pixels of a fixed shape, an index map: output pixel ``(y, x)`` of sample ``i`` is source
pixel ``(oy[i] + y', ox[i] + x')`` (``y'``/``x'`` mirrored when flipped) or the fill value
outside the image. ``gather_into`` applies that map for a whole batch straight from the
shard's bytes, through the pipeline's ``(C, 256)`` normalisation table, into the output
batch (uint8 NHWC for a device, the final float NCHW or NHWC batch on the CPU): one pass,
no per-sample Python. ``convert_into`` runs the same table over a uint8 NHWC batch.

NOTE [ Whole planes ]
When nothing moves (no crop offset, no flip: a pipeline that only normalises) and both the
source and the output are channels-first, each channel of a sample is one contiguous run
of ``h * w`` pixels in the shard and in the batch; ``_copy_planes`` maps it through the
table in one flat loop, which LLVM unrolls, about twice as fast as the row-by-row index
map of ``_gather`` on 3x64x64 samples. Channels-last sources into an NCHW batch
(``_gather_hwc``) read each source row once and write its three channels' rows together
(about 1.5x on 32x32 crops). The values are the same table entries.

NOTE [ Affine planes ]
A table lookup per pixel does not vectorise (each output needs its own load from the
table). A float32 normalisation table is affine, ``lut[c, v] = float32((v / 255 - mean)
/ std)``, so ``_affine_planes`` computes ``float32(v * a[c] + b[c])`` in float64 instead,
8 pixels per instruction, with ``a = 1 / (255 std)`` and ``b = -mean / std``. The float64
rounding of ``a`` and ``b`` is far below float32's, but a value could still land on the
other side of a float32 rounding boundary, so ``affine_table`` runs the kernel on all 256
bytes of each channel and uses it only when every value equals the table entry
(otherwise the table kernel runs): the output is bit for bit the table's. On the
benchmark machine a 512x3x64x64 batch takes about 4 ms instead of 5 on one core, and
about 4.2 instead of 5.3 ms per batch with two threads at once, where the writes of 25 MB
per batch into memory (about 8 GB/s here) are most of the cost.

NOTE [ Batch-drawn augmentation parameters ]
The per-sample ``Generator`` of the general path costs microseconds per sample, more
than the pixels of a 32x32 image. Here each parameter is a counter-based hash instead:
draw ``d`` of sample ``index`` is ``splitmix64(key ^ (index * phi + d * c))`` scaled to
``[0, 1)``, where ``key`` comes from ``SeedSequence((seed, epoch, rank, 0))``. It is a pure
function of ``(seed, epoch, rank, index)`` (``index``: the sample's position in the rank's
epoch stream), computed for a whole batch with a few NumPy operations, so resumed batches
get the same crops and flips. The distributions are torchvision's (offsets uniform over
the valid range, flips with probability ``p``); the values differ from the general path's
generator draws for the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdata.transforms.ops import CenterCrop, RandomCrop, RandomHorizontalFlip, RandomVerticalFlip

__all__ = [
    "CropSpec",
    "Params",
    "affine_table",
    "crop_spec",
    "convert_into",
    "draw_params",
    "gather_into",
    "param_key",
]

_PHI, _C = np.uint64(0x9E3779B97F4A7C15), 0xD1B54A32D192ED03


@dataclass(frozen=True)
class CropSpec:
    """The index map's parameters for sources of shape ``(h, w)``.

    Attributes:
        size: output ``(H, W)``.
        before: padding ``(top, left)`` (the offset of a draw of 0 is ``-before``).
        span: number of valid offsets ``(y, x)``; 1 for a fixed crop.
        center: the fixed offset ``(y, x)`` used when ``span`` is 1.
        hflip: probability of a horizontal flip; vflip likewise.
        fill: per-channel fill value of the padding.
    """

    size: tuple[int, int]
    before: tuple[int, int]
    span: tuple[int, int]
    center: tuple[int, int]
    hflip: float
    vflip: float
    fill: tuple[int, int, int]


@dataclass(frozen=True)
class Params:
    """Per-sample parameters of a batch: offsets and flips (int64 / bool arrays)."""

    oy: np.ndarray
    ox: np.ndarray
    hf: np.ndarray
    vf: np.ndarray


def crop_spec(sample_ops: list, h: int, w: int) -> CropSpec | None:
    """The index map of ``sample_ops`` on ``(h, w)`` sources, or None if they are not one."""
    size, before, span, center, fill = (h, w), (0, 0), (1, 1), (0, 0), (0, 0, 0)
    flips = {"h": 0.0, "v": 0.0}
    for i, t in enumerate(sample_ops):
        if isinstance(t, (RandomHorizontalFlip, RandomVerticalFlip)):
            flips["h" if isinstance(t, RandomHorizontalFlip) else "v"] = t.p
            continue
        if i > 0 or not isinstance(t, (RandomCrop, CenterCrop)):
            return None
        size = t.size
        if isinstance(t, CenterCrop):
            if size[0] > h or size[1] > w:
                return None
            center = (int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0)))
            continue
        if t.padding_mode != "constant":
            return None
        left, top, right, bottom = t.padding
        pads = []
        for n, lo, hi, s in ((h, top, bottom, size[0]), (w, left, right, size[1])):
            if t.pad_if_needed and n + lo + hi < s:
                lo, hi = lo + s - (n + lo + hi), hi + s - (n + lo + hi)
            if n + lo + hi < s:
                return None
            pads.append((lo, n + lo + hi - s + 1))
        before, span, fill = (pads[0][0], pads[1][0]), (pads[0][1], pads[1][1]), t.fill
        center = (-before[0], -before[1])
    return CropSpec(tuple(size), before, span, center, flips["h"], flips["v"], tuple(fill))


def param_key(seed: int, epoch: int, rank: int) -> int:
    """The 64-bit key of NOTE [ Batch-drawn augmentation parameters ]."""
    words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in (seed, epoch, rank, 0, 0x43524F50)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def uniforms(key: int, index: np.ndarray, draw: int) -> np.ndarray:
    """Draw ``draw`` of each sample ``index``, uniform in ``[0, 1)``."""
    x = index.astype(np.uint64) * _PHI ^ np.uint64((key + draw * _C) & 0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draw_params(spec: CropSpec, key: int, index: np.ndarray) -> Params:
    """The parameters of the samples at stream positions ``index``."""
    oy, ox = (
        (np.floor(uniforms(key, index, d) * spec.span[d]).astype(np.int64) - spec.before[d])
        if spec.span[d] > 1 else np.full(len(index), spec.center[d], np.int64)
        for d in (0, 1)
    )  # fmt: skip
    return Params(
        oy, ox, uniforms(key, index, 2) < spec.hflip, uniforms(key, index, 3) < spec.vflip
    )


def affine_table(lut: np.ndarray, mean, std, scale: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """``(a, b)``, float64 per channel, when ``_affine_planes`` reproduces ``lut`` exactly, else None.

    NOTE [ Affine planes ]: ``lut`` is the ``(3, 256)`` float32 table of ``Normalize(mean,
    std)`` after ``ToDtype(float32, scale=scale)``.
    """
    if lut.dtype != np.float32 or lut.shape != (3, 256):
        return None
    try:
        m = np.broadcast_to(np.asarray(mean, np.float64).reshape(-1), (3,))
        s = np.broadcast_to(np.asarray(std, np.float64).reshape(-1), (3,))
    except (TypeError, ValueError):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = (1.0 / 255.0 if scale else 1.0) / s, -m / s
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    got = np.empty((1, 3, 256), np.float32)
    zero = np.zeros(1, np.int64)
    _affine_planes(np.tile(np.arange(256, dtype=np.uint8), 3), zero, zero, 256, a, b, got)
    return (a, b) if np.array_equal(got[0], lut) else None


def gather_into(
    data, offsets, chw: bool, h: int, w: int, p: Params, fill, lut, out, nchw: bool, affine=None,
    rows=None,
) -> None:  # fmt: skip
    """Writes ``out[rows[i]]`` from the ``(h, w, 3)`` (or ``(3, h, w)``) uint8 pixels at ``offsets[i]``.

    Args:
        data: the shard's bytes (uint8).
        offsets: int64 byte offset of each sample's first pixel.
        chw: the source is channels-first.
        h, w: source size.
        p: per-sample offsets and flips.
        fill: uint8 fill per channel.
        lut: ``(3, 256)`` table in ``out``'s dtype (identity for uint8 output).
        out: ``(N, 3, H, W)`` when ``nchw`` else ``(N, H, W, 3)``, C-contiguous.
        nchw: layout of ``out``.
        affine: ``affine_table(lut, ...)``, or None (NOTE [ Affine planes ]).
        rows: int64 row of ``out`` for each sample (default ``0..len(offsets)-1``): the
            samples of one shard in a batch of several need not be adjacent, and are
            written in place, without a gathered copy.
    """
    hw = h * w
    rows = np.arange(len(offsets), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if chw and nchw and out.flags.c_contiguous and out.shape[2:] == (h, w) and not _moves(p):
        planes = out.reshape(len(out), 3, hw)
        if affine is not None:
            _affine_planes(data, offsets, rows, hw, affine[0], affine[1], planes)
        else:
            _copy_planes(data, offsets, rows, hw, lut, planes)  # NOTE [ Whole planes ]
        return
    fill = np.asarray(fill, np.uint8)
    if not chw and nchw:  # NOTE [ Whole planes ]: channels-last pixels into planes
        _gather_hwc(data, offsets, rows, h, w, p.oy, p.ox, p.hf, p.vf, fill, lut, out)
        return
    _gather(data, offsets, rows, chw, h, w, p.oy, p.ox, p.hf, p.vf, fill, lut, out, nchw)


def _moves(p: Params) -> bool:
    return bool(p.oy.any() or p.ox.any() or p.hf.any() or p.vf.any())


@njit(nogil=True, cache=True)
def _gather_hwc(data, offsets, rows, h, w, oy, ox, hf, vf, fill, lut, out):
    """``_gather`` for ``(h, w, 3)`` sources and an NCHW ``out``: one pass per source row."""
    H, W = out.shape[2], out.shape[3]
    t0, t1, t2 = lut[0], lut[1], lut[2]
    sx = np.empty(W, np.int64)
    for i in range(len(offsets)):
        for x in range(W):
            sx[x] = ox[i] + (W - 1 - x if hf[i] else x)
        full = sx.min() >= 0 and sx.max() < w
        for y in range(H):
            sy = oy[i] + (H - 1 - y if vf[i] else y)
            r0, r1, r2 = out[rows[i], 0, y], out[rows[i], 1, y], out[rows[i], 2, y]
            if sy < 0 or sy >= h:
                r0[:], r1[:], r2[:] = t0[fill[0]], t1[fill[1]], t2[fill[2]]
                continue
            src = data[offsets[i] + sy * w * 3 : offsets[i] + (sy + 1) * w * 3]
            for x in range(W):
                s = sx[x]
                if full or 0 <= s < w:
                    r0[x], r1[x], r2[x] = t0[src[3 * s]], t1[src[3 * s + 1]], t2[src[3 * s + 2]]
                else:
                    r0[x], r1[x], r2[x] = t0[fill[0]], t1[fill[1]], t2[fill[2]]


@njit(nogil=True, cache=True)
def _copy_planes(data, offsets, rows, hw, lut, out):
    """``out[rows[i], c, k] = lut[c, data[offsets[i] + c * hw + k]]``: channels-first, no crop or flip."""
    for i in range(len(offsets)):
        for c in range(3):
            base = offsets[i] + c * hw
            table, src, dst = lut[c], data[base : base + hw], out[rows[i], c]
            for k in range(hw):  # slices indexed by a range: no negative-index checks
                dst[k] = table[src[k]]


@njit(nogil=True, cache=True)
def _affine_planes(data, offsets, rows, hw, a, b, out):
    """``out[rows[i], c, k] = float32(data[offsets[i] + c * hw + k] * a[c] + b[c])`` (NOTE [ Affine planes ])."""
    for i in range(len(offsets)):
        for c in range(3):
            base = offsets[i] + c * hw
            ac, bc, src, dst = a[c], b[c], data[base : base + hw], out[rows[i], c]
            for k in range(hw):
                dst[k] = np.float32(np.float64(src[k]) * ac + bc)


@njit(nogil=True, cache=True)
def _gather(data, offsets, rows, chw, h, w, oy, ox, hf, vf, fill, lut, out, nchw):
    n = len(offsets)
    H = out.shape[2] if nchw else out.shape[1]
    W = out.shape[3] if nchw else out.shape[2]
    sx = np.empty(W, np.int64)
    for i in range(n):
        base = offsets[i]
        for x in range(W):
            sx[x] = ox[i] + (W - 1 - x if hf[i] else x)
        full = sx.min() >= 0 and sx.max() < w
        for y in range(H):
            sy = oy[i] + (H - 1 - y if vf[i] else y)
            for c in range(3):
                table = lut[c]
                row = out[rows[i], c, y] if nchw else out[rows[i], y, :, c]
                if sy < 0 or sy >= h:
                    row[:] = table[fill[c]]
                    continue
                lo = base + c * h * w + sy * w if chw else base + sy * w * 3 + c
                step = 1 if chw else 3
                if full:
                    for x in range(W):
                        row[x] = table[data[lo + sx[x] * step]]
                else:
                    for x in range(W):
                        s = sx[x]
                        row[x] = table[data[lo + s * step]] if 0 <= s < w else table[fill[c]]


@njit(nogil=True, cache=True)
def convert_into(src, rows, lut, out, nchw):
    """``out[rows[k]] = lut`` applied to ``src[k]`` (uint8 NHWC), in ``out``'s layout."""
    H, W = src.shape[1], src.shape[2]
    for k in range(len(rows)):
        i = rows[k]
        for y in range(H):
            for x in range(W):
                for c in range(3):
                    if nchw:
                        out[i, c, y, x] = lut[c, src[k, y, x, c]]
                    else:
                        out[i, y, x, c] = lut[c, src[k, y, x, c]]
