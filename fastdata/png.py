"""A small PNG decoder for the common case: 8-bit, non-interlaced, gray/RGB/RGBA.

Decoding a 32x32 PNG with Pillow costs far more Python (plugin lookup, chunk objects,
two opens when the header is read first) than pixels. Here the chunks are sliced out of
the bytes, the image data is inflated by ``zlib`` (which releases the GIL) and the rows
are unfiltered and converted to RGB by one Numba ``nogil`` kernel, straight into the
caller's array. Anything else (palettes, 16-bit samples, interlacing) returns ``None``
and the caller uses Pillow.

NOTE [ PNG colour conversion ]
Gray is replicated into three channels and alpha is dropped, as Pillow's
``convert("RGB")`` does for these modes (see NOTE [ Colour conversion ] in
:mod:`fastdata.decode`). A ``tRNS`` chunk does not change the RGB values.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from numba import njit

__all__ = ["png_size", "decode_png"]

_MAGIC = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (8-bit only)


def png_size(data) -> tuple[int, int] | None:
    """``(height, width)`` from the IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or bytes(data[:8]) != _MAGIC or bytes(data[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack(">II", bytes(data[16:24]))
    return int(height), int(width)


def _chunks(data: bytes):
    """``(kind, start, end)`` of each chunk's payload; raises ValueError when truncated."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        start, end = pos + 8, pos + 8 + length
        if end + 4 > n:
            raise ValueError("truncated PNG chunk")
        yield kind, start, end
        if kind == b"IEND":
            return
        pos = end + 4
    raise ValueError("PNG without IEND chunk")


def decode_png(data, out: np.ndarray | None = None) -> np.ndarray | None:
    """Decode an 8-bit non-interlaced gray/RGB(A) PNG into an ``(H, W, 3)`` uint8 array.

    Args:
        data: the PNG bytes.
        out: optional C-contiguous ``(H, W, 3)`` uint8 destination.

    Returns:
        The RGB array (``out`` when given), or None for a PNG this decoder does not
        handle (palette, 16-bit, interlaced), which Pillow then decodes.

    Raises:
        ValueError: the PNG is corrupt or truncated, or ``out`` has the wrong shape.
        zlib.error: the compressed image data is corrupt.
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    size = png_size(data)
    if size is None:
        raise ValueError("not a PNG")
    depth, ctype, _, _, interlace = data[24:29]
    if depth != 8 or interlace != 0 or ctype not in _CHANNELS:
        return None
    idat = [data[s:e] for kind, s, e in _chunks(data) if kind == b"IDAT"]
    raw = zlib.decompress(idat[0] if len(idat) == 1 else b"".join(idat))
    h, w = size
    spp = _CHANNELS[ctype]
    if len(raw) < h * (w * spp + 1):
        raise ValueError("PNG image data is shorter than its header says")
    if out is None:
        out = np.empty((h, w, 3), np.uint8)
    elif out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 {(h, w, 3)} array")
    if not unfilter_rgb(np.frombuffer(raw, np.uint8), h, w, spp, out):
        raise ValueError("PNG row with an unknown filter type")
    return out


@njit(nogil=True, cache=True, inline="always")
def _paeth(a, b, c):
    """The Paeth predictor of left ``a``, up ``b`` and up-left ``c`` (int32 values)."""
    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
    pred = b if pb <= pc else c
    return a if (pa <= pb and pa <= pc) else pred


@njit(nogil=True, cache=True)
def unfilter_inplace(raw, h, stride, spp):
    """Undo PNG row filters (None, Sub, Up, Average, Paeth) in the inflated data itself.

    Args:
        raw: writable uint8 array of ``h`` rows, each a filter-type byte and ``stride``
            bytes; after the call row ``y``'s pixels are ``raw[y * (stride + 1) + 1:][:stride]``.
        h, stride: rows and bytes per row (width times samples per pixel).
        spp: samples (bytes) per pixel.

    Returns:
        False when a row has an unknown filter type.
    """
    for y in range(h):
        base = y * (stride + 1) + 1
        up = base - stride - 1  # the previous row (unused for the first)
        kind = raw[base - 1]
        if kind == 0 or (kind == 2 and y == 0):
            continue
        if kind == 1 or (kind == 4 and y == 0):  # Paeth without a row above is Sub
            for i in range(base + spp, base + stride):
                raw[i] = np.uint8((np.int32(raw[i]) + np.int32(raw[i - spp])) & 255)
        elif kind == 2:
            for i in range(base, base + stride):
                raw[i] = np.uint8((np.int32(raw[i]) + np.int32(raw[i - stride - 1])) & 255)
        elif kind == 3:
            for i in range(base, base + stride):
                left = np.int32(raw[i - spp]) if i >= base + spp else 0
                above = np.int32(raw[i - stride - 1]) if y > 0 else 0
                raw[i] = np.uint8((np.int32(raw[i]) + ((left + above) >> 1)) & 255)
        elif kind == 4:
            for i in range(spp):  # a = c = 0: the predictor is b
                raw[base + i] = np.uint8((np.int32(raw[base + i]) + np.int32(raw[up + i])) & 255)
            for i in range(spp, stride):
                a, b = np.int32(raw[base + i - spp]), np.int32(raw[up + i])
                pred = _paeth(a, b, np.int32(raw[up + i - spp]))
                raw[base + i] = np.uint8((np.int32(raw[base + i]) + pred) & 255)
        else:
            return False
    return True


@njit(nogil=True, cache=True)
def unfilter_rgb(raw, h, w, spp, out):
    """Undo PNG row filters (None, Sub, Up, Average, Paeth) and write RGB into ``out``.

    ``raw`` is left unchanged (a copy is unfiltered). Returns False when a row has an
    unknown filter type.
    """
    stride = w * spp
    work = raw[: h * (stride + 1)].copy()
    if not unfilter_inplace(work, h, stride, spp):
        return False
    for y in range(h):
        row = work[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if spp == 3:
            out[y].reshape(stride)[:] = row
            continue
        for x in range(w):
            for ch in range(3):
                out[y, x, ch] = row[x * spp + (ch if spp >= 3 else 0)]
    return True
