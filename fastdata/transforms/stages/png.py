"""Batch stage for small PNGs: decode, RandomCrop and flips of many samples in one call.

A 32x32 PNG costs a few microseconds of pixel work, but decoding it sample by sample
from Python (a generator reset, ``zlib.decompress``, a Numba dispatch for the unfilter,
another for the crop) costs ~0.2 ms, all of it holding the GIL. ``SmallPngStage`` takes
the encoded bytes of a whole chunk of samples and does everything after "the bytes of the
file" in one Numba ``nogil`` call: parse the chunks, inflate the image data (libdeflate or
zlib, called from nopython code, NOTE [ zlib from Numba ]), unfilter
(:func:`fastdata.decode.png.unfilter_into`), draw the crop offsets and flips (NOTE
[ Counter-based draws ]) and write the crop, read straight from the pixel rows, into
the caller's uint8 batch slot (as :func:`~fastdata.transforms.kernels.cpu.crop_flip_into`
does from an RGB array).

It covers the resize-free plans (RandomCrop followed by flips, NOTE [ Resize-free fast
path ] in :mod:`fastdata.transforms.plan`) on 8-bit non-interlaced gray/RGB/gray-alpha/RGBA
PNGs. Every other sample (JPEG, palette, 16-bit, interlaced, truncated or corrupt data, an
image smaller than the crop with no padding to make up) is *declined*: its slot is left
alone and its ``done`` flag stays False, and the caller runs the general per-sample path
(``plan.sample_into``), which decodes it with the same conversions (NOTE [ PNG colour
conversion ] in :mod:`fastdata.decode.png`) or raises the error that names the file.

NOTE [ Counter-based draws ]
The draws of sample ``index`` are a pure function of the engine's 128-bit per-epoch key
(``SampleRng.key``: ``(seed, epoch, rank, worker)`` through ``SeedSequence``) and the
index, computed without any generator state: with ``mix`` the splitmix64 finaliser and
``G = 0x9E3779B97F4A7C15``, the sample's stream word is
``s = mix(key[0] ^ mix(key[1] + index * G))`` and its ``j``-th uniform double is
``(mix(s + (j + 1) * G) >> 11) * 2**-53``. Draw 0 places the crop vertically, draw 1
horizontally (``floor(u * n)`` over the ``n`` possible offsets), draw ``2 + k`` decides
flip ``k`` (``u < p``). These are not the values numpy's ``Generator`` would draw for the
same sample on the per-sample path, so a declined sample gets different (equally
distributed) parameters; which path a sample takes depends only on its bytes, so the
batches stay a pure function of ``(seed, epoch, rank, worker, index)`` and of the data.
"""

from __future__ import annotations

import ctypes.util
from collections.abc import Sequence

import numpy as np
from llvmlite import binding as llvm
from numba import njit, types

from fastdata.decode.png import unfilter_into
from fastdata.transforms.geometry import PAD_MODES
from fastdata.transforms.kernels.cpu import _pad_index

__all__ = ["SmallPngStage", "concatenate", "draw_uniforms"]


# NOTE [ zlib from Numba ]
# The image data is inflated inside the kernel by a C function declared to Numba as an
# external symbol: libdeflate's ``libdeflate_zlib_decompress`` where the system has
# libdeflate (about twice as fast as zlib on 2-4 KB streams), zlib's ``uncompress``
# otherwise. Loading the libraries "permanently" into LLVM's symbol table makes the names
# resolve both when the kernel is compiled and when it is loaded from Numba's cache (a
# ctypes function object would be a "dynamic global" and disable the cache). Without
# libdeflate its three names point to stubs that are never called (``HAVE_LIBDEFLATE``
# is False, so the kernel takes the zlib branch). Both run inside the ``nogil`` kernel.
def _load(name: str) -> bool:
    path = ctypes.util.find_library(name)
    if path is None:
        return False
    try:
        llvm.load_library_permanently(path)
    except RuntimeError:
        return False
    return True


AVAILABLE = _load("z") and llvm.address_of_symbol("uncompress") is not None
HAVE_LIBDEFLATE = _load("deflate") and all(
    llvm.address_of_symbol(f"libdeflate_{name}") is not None
    for name in ("alloc_decompressor", "free_decompressor", "zlib_decompress")
)
_STUBS = []
if not HAVE_LIBDEFLATE:  # never called: see NOTE [ zlib from Numba ]
    for _name, _proto in (
        ("alloc_decompressor", ctypes.CFUNCTYPE(ctypes.c_size_t)),
        ("free_decompressor", ctypes.CFUNCTYPE(None, ctypes.c_size_t)),
        ("zlib_decompress", ctypes.CFUNCTYPE(ctypes.c_int, *[ctypes.c_size_t] * 6)),
    ):
        _STUBS.append(_proto(lambda *args: 0))
        llvm.add_symbol(f"libdeflate_{_name}", ctypes.cast(_STUBS[-1], ctypes.c_void_p).value)
_uncompress = types.ExternalFunction(
    "uncompress", types.intc(types.voidptr, types.voidptr, types.voidptr, types.uint64)
)
_deflate_alloc = types.ExternalFunction("libdeflate_alloc_decompressor", types.uintp())
_deflate_free = types.ExternalFunction("libdeflate_free_decompressor", types.void(types.uintp))
_deflate_zlib = types.ExternalFunction(
    "libdeflate_zlib_decompress",
    types.intc(types.uintp, types.voidptr, types.uintp, types.voidptr, types.uintp, types.voidptr),
)

_MAX_RAW = 1 << 24  # larger images are declined (the per-sample path decodes them)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
DECLINED, DONE = 0, 1


@njit(nogil=True, cache=True, inline="always")
def _mix(z):
    """splitmix64's finaliser (a bijection of uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, cache=True, inline="always")
def _stream(key, index):
    return _mix(key[0] ^ _mix(key[1] + np.uint64(index) * _GOLDEN))


@njit(nogil=True, cache=True, inline="always")
def _uniform(stream, j):
    u = _mix(stream + np.uint64(j + 1) * _GOLDEN)
    return np.float64(u >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(nogil=True, cache=True)
def draw_uniforms(key, indices, count):
    """``(len(indices), count)`` uniform doubles of NOTE [ Counter-based draws ]."""
    out = np.empty((indices.shape[0], count), np.float64)
    for i in range(indices.shape[0]):
        s = _stream(key, indices[i])
        for j in range(count):
            out[i, j] = _uniform(s, j)
    return out


@njit(nogil=True, cache=True, inline="always")
def _be32(data, pos):
    return (
        (np.int64(data[pos]) << 24)
        | (np.int64(data[pos + 1]) << 16)
        | (np.int64(data[pos + 2]) << 8)
        | np.int64(data[pos + 3])
    )


@njit(nogil=True, cache=True)
def _inflate_small_png(data, scratch, inflater):
    """Inflates and unfilters one PNG: ``(rows, h, w, spp)``, ``h == 0`` to decline.

    ``rows`` holds the ``h`` pixel rows, ``w * spp`` bytes each. ``inflater`` is a
    libdeflate decompressor, or 0 to use zlib.
    """
    empty = scratch[:0]
    n = data.shape[0]
    if n < 45 or data[0] != 0x89 or data[1] != 0x50 or data[2] != 0x4E or data[3] != 0x47:
        return empty, 0, 0, 0
    if data[4] != 0x0D or data[5] != 0x0A or data[6] != 0x1A or data[7] != 0x0A:
        return empty, 0, 0, 0
    if (
        _be32(data, 8) != 13
        or data[12] != 0x49
        or data[13] != 0x48
        or data[14] != 0x44
        or data[15] != 0x52
    ):
        return empty, 0, 0, 0
    w, h = _be32(data, 16), _be32(data, 20)
    depth, ctype = data[24], data[25]
    if depth != 8 or data[26] != 0 or data[27] != 0 or data[28] != 0 or h < 1 or w < 1:
        return empty, 0, 0, 0
    spp = 1 if ctype == 0 else 3 if ctype == 2 else 2 if ctype == 4 else 4 if ctype == 6 else 0
    if spp == 0 or h > _MAX_RAW or w > _MAX_RAW or h * (w * spp + 1) > _MAX_RAW:
        return empty, 0, 0, 0
    # Chunks: gather the IDAT payloads (a single one is inflated where it lies).
    pos, first, total, pieces, ended = 8, 0, 0, 0, False
    while pos + 8 <= n:
        length = _be32(data, pos)
        start = pos + 8
        if start + length + 4 > n:
            return empty, 0, 0, 0
        kind = _be32(data, pos + 4)
        if kind == 0x49444154:  # IDAT
            if pieces == 0:
                first = start
            elif total + length > scratch.shape[0]:
                return empty, 0, 0, 0
            if pieces == 1:
                scratch[:total] = data[first : first + total]
            if pieces >= 1:
                scratch[total : total + length] = data[start : start + length]
            pieces += 1
            total += length
        elif kind == 0x49454E44:  # IEND
            ended = True
            break
        pos = start + length + 4
    if not ended or pieces == 0:
        return empty, 0, 0, 0
    compressed = data[first : first + total] if pieces == 1 else scratch[:total]
    expected = h * (w * spp + 1)
    raw = np.empty(expected, np.uint8)
    got = np.empty(1, np.uint64)
    got[0] = expected
    if inflater != 0:
        ret = _deflate_zlib(
            inflater, compressed.ctypes.data, total, raw.ctypes.data, expected, got.ctypes.data
        )
    else:
        ret = _uncompress(
            raw.ctypes.data, got.ctypes.data, compressed.ctypes.data, np.uint64(total)
        )
    rows = np.empty(h * w * spp, np.uint8)
    if ret != 0 or got[0] != expected or not unfilter_into(raw, h, w * spp, spp, rows):
        return empty, 0, 0, 0
    return rows, h, w, spp


@njit(nogil=True, cache=True)
def _crop_flip_rows(rows, h, w, spp, top, left, flip_y, flip_x, mode, fill, out):
    """``cpu.crop_flip_into`` reading PNG pixel rows (gray replicated, alpha dropped)."""
    oh, ow = out.shape[0], out.shape[1]
    stride = w * spp
    cols = np.empty(ow, np.int64)
    for x in range(ow):
        sx = _pad_index(left + (ow - 1 - x if flip_x else x), w, mode)
        cols[x] = -1 if sx < 0 else sx * spp
    for y in range(oh):
        sy = _pad_index(top + (oh - 1 - y if flip_y else y), h, mode)
        row = out[y]
        base = sy * stride
        for x in range(ow):
            c = cols[x]
            if sy < 0 or c < 0:
                row[x, 0], row[x, 1], row[x, 2] = fill[0], fill[1], fill[2]
            elif spp < 3:
                v = rows[base + c]
                row[x, 0], row[x, 1], row[x, 2] = v, v, v
            else:
                row[x, 0], row[x, 1], row[x, 2] = (
                    rows[base + c],
                    rows[base + c + 1],
                    rows[base + c + 2],
                )


@njit(nogil=True, cache=True, inline="always")
def _offset(u, n, size, before, after, pad_if_needed):
    """RandomCrop's offset on one axis (``RandomCrop.offsets``); ``-(1 << 40)``: cannot crop."""
    if pad_if_needed and n + before + after < size:
        diff = size - (n + before + after)
        before, after = before + diff, after + diff
    padded = n + before + after
    if padded < size:
        return -(1 << 40)
    if padded == size:
        return -before
    return np.int64(u * (padded - size + 1)) - before


@njit(nogil=True, cache=True)
def decode_crop_flip(
    flat, starts, ends, indices, key, geom, flip_p, flip_axis, fill, out, done, params, deflate
):
    """Decodes, crops and flips samples ``i`` of ``flat[starts[i]:ends[i]]`` into ``out[i]``.

    Args:
        flat: the chunk's encoded files, concatenated (uint8).
        starts, ends: where each sample's bytes lie in ``flat``.
        indices: each sample's index in the epoch (NOTE [ Counter-based draws ]).
        key: the epoch's two uint64 key words.
        geom: int64 ``[crop_h, crop_w, pad_left, pad_top, pad_right, pad_bottom,
            pad_if_needed, padding mode]``.
        flip_p, flip_axis: each flip's probability and axis (0 vertical, 1 horizontal).
        fill: uint8 ``(3,)`` constant padding value.
        out: ``(N, crop_h, crop_w, 3)`` uint8; only the done samples' slots are written.
        done: uint8 ``(N,)``: set to DONE or DECLINED per sample.
        params: int64 ``(N, 4)``: the done samples' ``(top, left, flip_y, flip_x)``.
        deflate: inflate with libdeflate (else zlib; NOTE [ zlib from Numba ]).
    """
    scratch = np.empty(1 << 16, np.uint8)
    inflater = _deflate_alloc() if deflate else np.uintp(0)
    for i in range(starts.shape[0]):
        done[i] = DECLINED
        rows, h, w, spp = _inflate_small_png(flat[starts[i] : ends[i]], scratch, inflater)
        if h == 0:
            continue
        s = _stream(key, indices[i])
        top = _offset(_uniform(s, 0), h, geom[0], geom[3], geom[5], geom[6])
        left = _offset(_uniform(s, 1), w, geom[1], geom[2], geom[4], geom[6])
        if top == -(1 << 40) or left == -(1 << 40):
            continue
        flips = np.zeros(2, np.bool_)
        for k in range(flip_p.shape[0]):
            if _uniform(s, 2 + k) < flip_p[k]:
                flips[flip_axis[k]] = not flips[flip_axis[k]]
        _crop_flip_rows(rows, h, w, spp, top, left, flips[0], flips[1], geom[7], fill, out[i])
        params[i, 0], params[i, 1], params[i, 2], params[i, 3] = top, left, flips[0], flips[1]
        done[i] = DONE
    if inflater != 0:
        _deflate_free(inflater)


def concatenate(sources: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat, starts, ends)``: a chunk's encoded files in one uint8 array, and where each
    lies; anything not ``bytes``/``memoryview`` (a failed read, an array) becomes empty."""
    blobs = [s if isinstance(s, (bytes, bytearray, memoryview)) else b"" for s in sources]
    sizes = np.array([memoryview(b).nbytes for b in blobs], np.int64)
    ends = np.cumsum(sizes)
    return np.frombuffer(b"".join(blobs), np.uint8), ends - sizes, ends


class SmallPngStage:
    """The batch stage of a resize-free plan (RandomCrop, then flips) on PNG bytes.

    Args:
        crop: the plan's ``RandomCrop``.
        flips: ``(p, axis)`` of each flip after it, axis 0 vertical, 1 horizontal.
        deflate: inflate with libdeflate where the system has it (NOTE [ zlib from Numba ]).
    """

    def __init__(
        self, crop, flips: Sequence[tuple[float, int]], deflate: bool = HAVE_LIBDEFLATE
    ) -> None:
        self.deflate = bool(deflate) and HAVE_LIBDEFLATE
        left, top, right, bottom = crop.padding
        self.geom = np.array(
            [*crop.size, left, top, right, bottom, int(crop.pad_if_needed),
             PAD_MODES.index(crop.padding_mode)], np.int64,
        )  # fmt: skip
        self.flip_p = np.array([p for p, _ in flips], np.float64)
        self.flip_axis = np.array([a for _, a in flips], np.int64)
        self.fill = np.asarray(crop.fill, np.uint8)

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
            ``(N, 4)`` ``(top, left, flip_y, flip_x)`` drawn for the done samples.
        """
        n = len(sources)
        flat, starts, ends = concatenate(sources)
        done = np.zeros(n, np.uint8)
        params = np.zeros((n, 4), np.int64)
        key = np.asarray(key, np.uint64)
        decode_crop_flip(
            flat, starts, ends, np.asarray(indices, np.int64), key, self.geom,
            self.flip_p, self.flip_axis, self.fill, out, done, params, self.deflate,
        )  # fmt: skip
        return done.astype(bool), params
