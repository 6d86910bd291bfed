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
:mod:`fastdata.decode.images`). A ``tRNS`` chunk does not change the RGB values.
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
    return a if (pa <= pb) & (pa <= pc) else (b if pb <= pc else c)


@njit(nogil=True, cache=True)
def _paeth_row3(raw, s, dst, d, up, stride, first):
    """A Paeth row of 3-byte pixels, the left and up-left pixels carried in registers.

    About 2.5x faster than the byte loop of ``unfilter_into``, which reloads the left
    pixel it has just stored; Paeth is the filter of most rows in photographs.
    """
    a0, a1, a2 = np.int32(0), np.int32(0), np.int32(0)
    c0, c1, c2 = np.int32(0), np.int32(0), np.int32(0)
    for x in range(0, stride, 3):
        b0, b1, b2 = np.int32(0), np.int32(0), np.int32(0)
        if not first:
            b0, b1, b2 = np.int32(dst[up + x]), np.int32(dst[up + x + 1]), np.int32(dst[up + x + 2])
        a0 = (np.int32(raw[s + x]) + _paeth(a0, b0, c0)) & 255
        a1 = (np.int32(raw[s + x + 1]) + _paeth(a1, b1, c1)) & 255
        a2 = (np.int32(raw[s + x + 2]) + _paeth(a2, b2, c2)) & 255
        dst[d + x], dst[d + x + 1], dst[d + x + 2] = a0, a1, a2
        c0, c1, c2 = b0, b1, b2


@njit(nogil=True, cache=True)
def unfilter_into(raw, h, stride, spp, dst):
    """Undo PNG row filters (None, Sub, Up, Average, Paeth).

    Args:
        raw: the inflated image data: ``h`` rows, each a filter-type byte and ``stride``
            bytes (width times samples per pixel).
        h, stride: rows and bytes per row.
        spp: samples (bytes) per pixel.
        dst: ``h * stride`` uint8 destination (flat, C-contiguous): the pixel rows.

    Returns:
        False when a row has an unknown filter type.
    """
    for y in range(h):
        s, d = y * (stride + 1) + 1, y * stride
        up = d - stride  # the previous row (not read for the first)
        kind = raw[s - 1]
        first = y == 0
        if kind == 0 or (kind == 2 and first):
            dst[d : d + stride] = raw[s : s + stride]
        elif kind == 1 or (kind == 4 and first and spp != 3):  # Paeth, no row above: Sub
            for i in range(stride):
                left = np.int32(dst[d + i - spp]) if i >= spp else 0
                dst[d + i] = np.uint8((np.int32(raw[s + i]) + left) & 255)
        elif kind == 2:
            for i in range(stride):
                dst[d + i] = np.uint8((np.int32(raw[s + i]) + np.int32(dst[up + i])) & 255)
        elif kind == 3:
            for i in range(stride):
                left = np.int32(dst[d + i - spp]) if i >= spp else 0
                above = 0 if first else np.int32(dst[up + i])
                dst[d + i] = np.uint8((np.int32(raw[s + i]) + ((left + above) >> 1)) & 255)
        elif kind == 4 and spp == 3:
            _paeth_row3(raw, s, dst, d, up, stride, first)
        elif kind == 4:
            for i in range(stride):
                a = np.int32(dst[d + i - spp]) if i >= spp else 0
                c = np.int32(dst[up + i - spp]) if i >= spp else 0
                pred = _paeth(a, np.int32(dst[up + i]), c)
                dst[d + i] = np.uint8((np.int32(raw[s + i]) + pred) & 255)
        else:
            return False
    return True


@njit(nogil=True, cache=True)
def unfilter_rgb(raw, h, w, spp, out):
    """Undo PNG row filters (None, Sub, Up, Average, Paeth) and write RGB into ``out``.

    Returns False when a row has an unknown filter type.
    """
    stride = w * spp
    if spp == 3:
        return unfilter_into(raw, h, stride, spp, out.reshape(h * stride))
    rows = np.empty(h * stride, np.uint8)
    if not unfilter_into(raw, h, stride, spp, rows):
        return False
    for y in range(h):
        for x in range(w):
            for ch in range(3):
                out[y, x, ch] = rows[y * stride + x * spp + (ch if spp >= 3 else 0)]
    return True
