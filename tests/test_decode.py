"""Decoding: pixels against Pillow, colour modes, DCT scaling, typed errors on bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastdata.decode.images import decode_image, image_format, image_size
from fastdata.decode.png import decode_png
from fastdata.errors import DecodeError


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(h=120, w=160, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def test_jpeg_matches_pillow_exactly():
    data = _encode(_photo(), "JPEG", quality=90)
    ours = decode_image(data)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_png_modes_become_rgb(mode):
    rgb = _photo(37, 53, seed=1)
    img = Image.fromarray(rgb).convert(mode)
    data = _encode(np.asarray(img), "PNG") if mode != "P" else _save(img, "PNG")
    ours = decode_image(data)
    assert ours.shape == (37, 53, 3)
    np.testing.assert_array_equal(ours, np.asarray(img.convert("RGB")))


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_grayscale_jpeg_is_replicated():
    gray = _photo(64, 48)[:, :, 0]
    ours = decode_image(_encode(gray, "JPEG", quality=95))
    assert ours.shape == (64, 48, 3)
    np.testing.assert_array_equal(ours[:, :, 0], ours[:, :, 2])


def test_webp_decodes():
    rgb = _photo(40, 30)
    data = _encode(rgb, "WEBP", lossless=True)
    assert image_format(data) == "webp"
    np.testing.assert_array_equal(decode_image(data), rgb)


def test_dct_scaling_respects_minimum_and_halves():
    data = _encode(_photo(400, 352), "JPEG", quality=90)
    assert image_size(data) == (400, 352)
    reduced = decode_image(data, reduce_to=(100, 80))
    assert reduced.shape[0] >= 100 and reduced.shape[1] >= 80
    assert reduced.shape[:2] == (100, 88)  # 1/4 is the largest factor that keeps both minimums
    full = decode_image(data).astype(np.float64)
    pooled = full.reshape(100, 4, 88, 4, 3).mean((1, 3))
    assert np.abs(pooled - reduced).mean() < 4.0


def test_reduce_to_that_cannot_halve_decodes_full_size():
    data = _encode(_photo(50, 60), "JPEG")
    assert decode_image(data, reduce_to=(40, 40)).shape == (50, 60, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_and_corrupt_raise_typed_error_naming_sample(fmt):
    data = _encode(_photo(), fmt)
    for bad in (data[: len(data) // 2], b"\x00" * 10 + data[10:], b"not an image"):
        with pytest.raises(DecodeError) as info:
            decode_image(bad, url="shard-000.tar", key="s0042", field="jpg")
        err = info.value
        assert (err.url, err.key, err.field) == ("shard-000.tar", "s0042", "jpg")
        assert "s0042" in str(err) and err.__cause__ is not None


def test_non_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        decode_image(np.zeros(3))


@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "I;16"]),
    smooth=st.booleans(),
    optimize=st.booleans(),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=80, deadline=None)
def test_png_fast_decoder_matches_pillow(h, w, mode, smooth, optimize, seed):
    rgba = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    if smooth:  # exercises every row filter, not only the ones noise selects
        rgba = (np.cumsum(rgba.astype(np.int64), axis=0) // (h + 1)).astype(np.uint8)
    img = Image.fromarray(rgba).convert(mode)
    data = _save_png(img, optimize)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert image_size(data) == (h, w)
    np.testing.assert_array_equal(decode_image(data), expected)
    fast = decode_png(data)
    if fast is not None:  # None: palette/16-bit PNGs are Pillow's
        np.testing.assert_array_equal(fast, expected)


def _save_png(img: Image.Image, optimize: bool) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=optimize)
    return buf.getvalue()


def test_corrupt_png_data_raises_decode_error_naming_sample():
    data = bytearray(_encode(_photo(40, 40), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start : start + 20] = bytes(20)  # zeroed compressed bytes: zlib's checksum fails
    with pytest.raises(DecodeError, match="s1"):
        decode_image(bytes(data), url="a.tar", key="s1", field="png")
    with pytest.raises(DecodeError):
        decode_image(bytes(data)[: len(data) // 2], key="s2")


@pytest.mark.parametrize("reduce_to", [None, (8, 8)])
def test_cmyk_jpeg_matches_pillow_exactly(reduce_to):
    """torchvision's loader converts CMYK JPEGs with Pillow; so must every fastdata path."""
    rng = np.random.default_rng(11)
    cmyk = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(decode_image(data, reduce_to=reduce_to), expected)

    from fastdata import transforms as T

    plan = T.Compose([T.DecodeImage(), T.CenterCrop(24)]).plan()
    out = np.empty(plan.sample_shape, np.uint8)
    plan.sample_into(data, out, np.random.default_rng(0))
    assert np.array_equal(out, expected[8:32, 12:36])
