"""Region-of-interest JPEG decoding against a full decode (simplejpeg and Pillow)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from fastdata import transforms as F
from fastdata.decode import roi
from fastdata.errors import DecodeError

pytestmark = pytest.mark.skipif(not roi.available(), reason="no C compiler or libjpeg here")


def _jpeg(rng: np.random.Generator, h: int, w: int, **save) -> bytes:
    coarse = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    noise = rng.integers(-20, 21, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.convert(save.pop("mode", "RGB")).save(buf, format="JPEG", **save)
    return buf.getvalue()


KINDS = {
    "420": {"quality": 90, "subsampling": 2},
    "422": {"quality": 85, "subsampling": 1},
    "444": {"quality": 95, "subsampling": 0},
    "gray": {"quality": 90, "mode": "L"},
    "progressive": {"quality": 90, "progressive": True},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_regions_equal_the_full_decode(kind):
    rng = np.random.default_rng()
    for _ in range(4):
        h, w = int(rng.integers(17, 300)), int(rng.integers(17, 300))
        data = _jpeg(rng, h, w, **dict(KINDS[kind]))
        full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(full, simplejpeg.decode_jpeg(data, colorspace="RGB"))
        for _ in range(12):
            rh, rw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
            top, left = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
            pixels, used = roi.decode_region(data, top, left, rh, rw)
            assert used <= left and used + pixels.shape[1] >= left + rw
            got = pixels[:, left - used : left - used + rw]
            assert np.array_equal(got, full[top : top + rh, left : left + rw]), (top, left, rh, rw)


def test_errors_name_the_problem():
    data = _jpeg(np.random.default_rng(), 40, 70)
    with pytest.raises(DecodeError, match="outside the image"):
        roi.decode_region(data, 30, 0, 20, 10)
    with pytest.raises(DecodeError, match="JPEG"):
        roi.decode_region(b"\xff\xd8\xff\xe0 not a jpeg at all", 0, 0, 1, 1)
    with pytest.raises(DecodeError):
        roi.decode_region(data[: len(data) // 3] + b"\x00" * 8, 0, 0, 40, 70)


def test_cmyk_is_left_to_the_full_decoder():
    buf = io.BytesIO()
    Image.new("CMYK", (32, 24), (10, 200, 30, 0)).save(buf, format="JPEG")
    assert roi.decode_region(buf.getvalue(), 0, 0, 8, 8) is None


def test_plan_output_is_identical_with_and_without_region_decoding(monkeypatch):
    rng = np.random.default_rng()
    plan = F.Compose([F.RandomResizedCrop(56), F.RandomHorizontalFlip()]).plan()
    images = [_jpeg(rng, int(rng.integers(60, 160)), int(rng.integers(60, 160))) for _ in range(6)]
    seeds = rng.integers(0, 2**32, len(images))

    def run() -> list[np.ndarray]:
        outs = []
        for data, seed in zip(images, seeds, strict=True):
            out = np.empty((56, 56, 3), np.uint8)
            plan.sample_into(data, out, np.random.default_rng(int(seed)))
            outs.append(out)
        return outs

    with_region = run()
    monkeypatch.setattr(roi, "available", lambda: False)
    whole = run()
    for a, b in zip(with_region, whole, strict=True):
        assert np.array_equal(a, b)


def test_corrupt_jpeg_error_names_the_sample():
    plan = F.Compose([F.RandomResizedCrop(32)]).plan()
    data = _jpeg(np.random.default_rng(), 64, 64)
    broken = data[:200] + bytes(len(data) - 200)
    with pytest.raises(DecodeError) as info:
        plan.sample_into(broken, np.empty((32, 32, 3), np.uint8), np.random.default_rng(0),
                         url="shard-000.tar", key="k7", field="jpg")  # fmt: skip
    assert "shard-000.tar" in str(info.value) and "k7" in str(info.value)
