"""Batch stage for JPEGs: RandomResizedCrop and flips of many samples in one call.

The ImageNet pipeline (RandomResizedCrop, then flips) costs about 1.1 ms of native work
per photo (region decoding and resampling, both outside the GIL), but driving it sample
by sample from Python (a generator reset, the box drawing, the symbolic geometry, two
resampling tables, the ctypes call) added about 0.12 ms of GIL-holding Python per sample
and enough short-lived objects that Python's garbage collector took another 5% of the
CPU. ``JpegCropStage`` takes the encoded bytes of a whole chunk of samples and does
everything in one Numba ``nogil`` call, per sample:

1. read the size from the JPEG's frame header;
2. draw the box exactly as torchvision's ``RandomResizedCrop`` does (ten attempts at an
   area fraction uniform in ``scale`` and a log-uniform aspect ratio, then the central
   fallback) and the flips, from the counter-based draws of NOTE [ Counter-based draws ]
   in :mod:`fastdata.transforms.stages.png` (draws ``2t`` and ``2t + 1`` for attempt ``t``, 20 and
   21 place the box, ``22 + k`` decides flip ``k``);
3. build both resampling tables (:func:`~fastdata.transforms.kernels.cpu.axis_tables`);
4. decode only the region they read with the region decoder of :mod:`fastdata.decode.roi`,
   linked into the kernel as an external symbol (NOTE [ zlib from Numba ] in
   :mod:`fastdata.transforms.stages.png` says why not through a ctypes object);
5. resample it into the caller's slot (``_resample_columns``).

The pixels are those of the per-sample path for the same box and flips (tested). It
declines (leaves the slot alone, ``done`` False) what the per-sample path handles
differently or must report: bytes that are not a JPEG, a corrupt or CMYK JPEG, a box that
shrinks enough for DCT-scaled decoding (NOTE [ DCT scaling margin ] in
:mod:`fastdata.transforms.geometry`). The caller then runs ``plan.sample_into``, which
decodes it or raises the error that names the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from llvmlite import binding as llvm
from numba import njit, types

from fastdata.decode import roi
from fastdata.decode.images import max_image_pixels
from fastdata.transforms.geometry import DCT_MARGIN
from fastdata.transforms.kernels.cpu import _resample_columns, axis_tables, extent
from fastdata.transforms.stages.png import _stream, _uniform, concatenate

__all__ = ["JpegCropStage", "available", "jpeg_size"]

_decode_region = types.ExternalFunction(
    "fd_decode_region",
    types.intc(
        types.voidptr, types.uint64, types.intc, types.intc, types.intc, types.intc,
        types.voidptr, types.uint64, types.voidptr, types.voidptr, types.voidptr, types.intc,
    ),
)  # fmt: skip
_linked = False


def available() -> bool:
    """Whether the stage can run here: the region decoder builds and links (once)."""
    global _linked
    if not _linked:
        path = roi.library_path()
        if path is None:
            return False
        llvm.load_library_permanently(path)
        _linked = llvm.address_of_symbol("fd_decode_region") is not None
    return _linked


@njit(nogil=True, cache=True, inline="always")
def _be16(data, pos):
    return (np.int64(data[pos]) << 8) | np.int64(data[pos + 1])


@njit(nogil=True, cache=True)
def jpeg_size(data):
    """``(height, width)`` from a JPEG's frame header, ``(0, 0)`` if there is none."""
    n = data.shape[0]
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return 0, 0
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return 0, 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9 or marker == 0xDA:  # end of image, start of scan: no frame
            return 0, 0
        if 0xC0 <= marker <= 0xCF and marker != 0xC4 and marker != 0xC8 and marker != 0xCC:
            if pos + 9 > n:
                return 0, 0
            return _be16(data, pos + 5), _be16(data, pos + 7)
        pos += 2 + _be16(data, pos + 2)
    return 0, 0


@njit(nogil=True, cache=True)
def rrc_box(h, w, scale, log_ratio, ratio_lo, ratio_hi, s):
    """torchvision's RandomResizedCrop box ``(top, left, height, width)`` from stream ``s``."""
    area = h * w
    for t in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _uniform(s, 2 * t))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * _uniform(s, 2 * t + 1))
        cw = int(np.rint(math.sqrt(target * aspect)))
        ch = int(np.rint(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(_uniform(s, 20) * (h - ch + 1))
            left = int(_uniform(s, 21) * (w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio_lo:
        cw, ch = w, int(np.rint(w / ratio_lo))
    elif in_ratio > ratio_hi:
        ch, cw = h, int(np.rint(h * ratio_hi))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@njit(nogil=True, cache=True)
def _table(size, lo, length, n_out, flipped, kind, antialias):
    scale = length / n_out
    stretch = scale if (antialias and scale > 1.0) else 1.0
    radius = 0.5 if kind == 0 else (1.0 if kind == 1 else 2.0)
    rows = np.arange(n_out).astype(np.int32)
    if flipped:
        rows = rows[::-1].copy()
    starts, counts = np.empty(n_out, np.int32), np.empty(n_out, np.int32)
    weights = np.zeros((n_out, int(2 * radius * stretch) + 3), np.float32)
    axis_tables(size, lo, length, n_out, rows, kind, antialias, starts, counts, weights)
    return starts, counts, weights


@njit(nogil=True, cache=True)
def crop_resize_flip(
    flat, starts, ends, indices, key, spec, flip_p, flip_axis, out, done, params
):
    """Decodes, crops, resizes and flips samples ``i`` of ``flat[starts[i]:ends[i]]``.

    Args:
        flat: the chunk's encoded files, concatenated (uint8).
        starts, ends: where each sample's bytes lie in ``flat``.
        indices: each sample's index in the epoch (NOTE [ Counter-based draws ]).
        key: the epoch's two uint64 key words.
        spec: float64 ``[scale_lo, scale_hi, ratio_lo, ratio_hi, kind, antialias,
            reduce, max_pixels]``: the box rule, the filter, whether DCT scaling may
            apply, and the pixel limit (larger images are declined, NOTE [ Pixel limit ]
            in ``fastdata.decode.images``).
        flip_p, flip_axis: each flip's probability and axis (0 vertical, 1 horizontal).
        out: ``(N, H, W, 3)`` uint8; only the done samples' slots are written.
        done: uint8 ``(N,)``: 1 where the slot was written, 0 where declined.
        params: int64 ``(N, 6)``: the done samples' ``(top, left, height, width, flip_y,
            flip_x)``.
    """
    oh, ow = out.shape[1], out.shape[2]
    scale = spec[0:2]
    log_ratio = np.array([math.log(spec[2]), math.log(spec[3])])
    kind, antialias, reduce = int(spec[4]), spec[5] != 0.0, spec[6] != 0.0
    fill = np.zeros(3, np.uint8)
    gain = np.float32(1.0)
    scratch = np.empty(1 << 20, np.uint8)
    used = np.zeros(2, np.int32)
    err = np.zeros(256, np.uint8)
    flips = np.zeros(2, np.bool_)
    for i in range(starts.shape[0]):
        done[i] = 0
        data = flat[starts[i] : ends[i]]
        h, w = jpeg_size(data)
        if h < 1 or w < 1 or h * w > spec[7]:
            continue
        s = _stream(key, indices[i])
        top, left, ch, cw = rrc_box(h, w, scale, log_ratio, spec[2], spec[3], s)
        if reduce and kind != 0 and antialias and min(ch / oh, cw / ow) >= 2.0 * DCT_MARGIN:
            continue  # the per-sample path decodes it DCT-scaled
        flips[0] = flips[1] = False
        for k in range(flip_p.shape[0]):
            if _uniform(s, 22 + k) < flip_p[k]:
                flips[flip_axis[k]] = not flips[flip_axis[k]]
        ys, yc, yw = _table(h, float(top), float(ch), oh, flips[0], kind, antialias)
        xs, xc, xw = _table(w, float(left), float(cw), ow, flips[1], kind, antialias)
        y0, y1 = extent(ys, yc)
        x0, x1 = extent(xs, xc)
        if y1 <= y0 or x1 <= x0:
            continue
        # As fastdata.decode.roi.decode_region: one more column each side (NOTE [ Edge columns
        # of a cropped decode ]), and room for libjpeg-turbo's widening to whole iMCUs.
        rl = max(x0 - 1, 0)
        rw = x1 - rl + 1
        rh = y1 - y0
        need = rh * (rw + 64) * 3
        if scratch.shape[0] < need:
            scratch = np.empty(need, np.uint8)
        status = _decode_region(
            data.ctypes.data, data.shape[0], y0, rl, rh, rw, scratch.ctypes.data,
            scratch.shape[0], used[0:1].ctypes.data, used[1:2].ctypes.data, err.ctypes.data,
            err.shape[0],
        )  # fmt: skip
        if status != 0:
            continue
        region = scratch[: rh * used[1] * 3].reshape(rh, used[1], 3)
        _resample_columns(region, ys - y0, yc, yw, xs - used[0], xc, xw, fill, gain, out[i])
        params[i, 0], params[i, 1], params[i, 2], params[i, 3] = top, left, ch, cw
        params[i, 4], params[i, 5] = flips[0], flips[1]
        done[i] = 1


class JpegCropStage:
    """The batch stage of a RandomResizedCrop-then-flips plan on JPEG bytes.

    Args:
        crop: the plan's ``RandomResizedCrop``.
        flips: ``(p, axis)`` of each flip after it, axis 0 vertical, 1 horizontal.
        reduce: whether the plan decodes DCT-scaled where the box shrinks enough (such
            samples are declined).
    """

    def __init__(self, crop, flips: Sequence[tuple[float, int]], reduce: bool) -> None:
        self.spec = np.array(
            [*crop.scale, *crop.ratio, crop.interpolation, crop.antialias, reduce], np.float64
        )
        self.size = tuple(crop.size)
        self.flip_p = np.array([p for p, _ in flips], np.float64)
        self.flip_axis = np.array([a for _, a in flips], np.int64)

    def run(
        self, sources: Sequence, indices: Sequence[int], key: np.ndarray, out: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Writes the samples it can into ``out``; returns ``(done, params)``.

        Args:
            sources: each sample's encoded bytes (``bytes``/``memoryview``); anything else
                (None for a file that could not be read, an array) is declined.
            indices: each sample's index in the epoch.
            key: the epoch's key words (``SampleRng.key``).
            out: ``(len(sources), H, W, 3)`` uint8 slots.

        Returns:
            ``done``: bool per sample, True where its slot was written; ``params``: int64
            ``(N, 6)`` ``(top, left, height, width, flip_y, flip_x)`` of the done samples.
        """
        n = len(sources)
        flat, starts, ends = concatenate(sources)
        done = np.zeros(n, np.uint8)
        params = np.zeros((n, 6), np.int64)
        limit = max_image_pixels()
        spec = np.append(self.spec, np.inf if limit is None else float(limit))
        crop_resize_flip(
            flat, starts, ends, np.asarray(indices, np.int64), np.asarray(key, np.uint64),
            spec, self.flip_p, self.flip_axis, out, done, params,
        )  # fmt: skip
        return done.astype(bool), params
