"""fastdata.decode.png on PNGs written by the tests' own encoder (every row filter, split IDATs)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastdata.decode.png import decode_png, unfilter_into

SPP = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def filter_rows(pixels: np.ndarray, filters: list[int]) -> bytes:
    """PNG row filtering written from the specification, in plain Python integers."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1).astype(np.int64)
    spp = 1 if pixels.ndim == 2 else pixels.shape[2]
    out = bytearray()
    for y in range(h):
        kind, row = filters[y], rows[y]
        prev = rows[y - 1] if y > 0 else np.zeros_like(row)
        out.append(kind)
        for i in range(len(row)):
            a = int(row[i - spp]) if i >= spp else 0
            b, c = int(prev[i]), int(prev[i - spp]) if i >= spp else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            out.append((int(row[i]) - pred) % 256)
    return bytes(out)


def encode_png(pixels: np.ndarray, ctype: int, filters: list[int], idat_pieces: int = 1) -> bytes:
    """An 8-bit PNG of ``pixels`` with the given row filters and IDAT split."""
    h, w = pixels.shape[:2]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    stream = zlib.compress(filter_rows(pixels, filters), 6)
    cuts = np.linspace(0, len(stream), idat_pieces + 1).astype(int)
    idats = b"".join(chunk(b"IDAT", stream[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    header = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    text = chunk(b"tEXt", b"Comment\x00made by the tests")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + idats + chunk(b"IEND", b"")


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """NOTE [ PNG colour conversion ]: gray replicated, alpha dropped."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.repeat(pixels[:, :, :1], 3, axis=2) if pixels.shape[2] <= 2 else pixels[:, :, :3]


def random_pixels(rng: np.random.Generator, h: int, w: int, ctype: int) -> np.ndarray:
    shape = (h, w) if ctype == 0 else (h, w, SPP[ctype])
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    smooth = np.cumsum(noise.astype(np.int64), axis=0) // (np.arange(h) + 1).reshape(
        (h,) + (1,) * (noise.ndim - 1)
    )
    return np.where(rng.random(shape) < 0.5, noise, smooth.astype(np.uint8))


@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    ctype=st.sampled_from([0, 2, 4, 6]),
    pieces=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_every_filter_type_decodes_to_the_pixels(h, w, ctype, pieces, seed):
    rng = np.random.default_rng(seed)
    pixels = random_pixels(rng, h, w, ctype)
    filters = [int(f) for f in rng.integers(0, 5, h)]
    filters[: min(h, 5)] = list(range(5))[: min(h, 5)]  # each type, also on the first row
    data = encode_png(pixels, ctype, filters, pieces)
    np.testing.assert_array_equal(decode_png(data), as_rgb(pixels))
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(pil, as_rgb(pixels))  # the encoder itself is right


@pytest.mark.parametrize("kind", range(5))
@pytest.mark.parametrize("spp", [1, 2, 3, 4])
def test_unfilter_against_the_specification(kind, spp):
    rng = np.random.default_rng(kind)
    pixels = rng.integers(0, 256, (7, 9, spp), dtype=np.uint8)
    raw = np.frombuffer(filter_rows(pixels, [kind] * 7), np.uint8)
    rows = np.empty(7 * 9 * spp, np.uint8)
    assert unfilter_into(raw, 7, 9 * spp, spp, rows)
    np.testing.assert_array_equal(rows.reshape(7, 9, spp), pixels)


def test_unknown_filter_type_is_refused():
    raw = np.zeros(2 * 7, np.uint8)
    raw[7] = 5  # second row: filter type 5 does not exist
    assert not unfilter_into(raw, 2, 6, 3, np.empty(12, np.uint8))
