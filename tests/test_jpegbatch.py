"""The JPEG batch stage against the per-sample path, torchvision's box rule and PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from test_roi import KINDS, _jpeg  # the same JPEG kinds the region decoder is tested on
from torchvision.transforms import RandomResizedCrop as TvRandomResizedCrop

from fastdata import transforms as F
from fastdata.decode import roi
from fastdata.decode.images import decode_image, image_size
from fastdata.transforms.geometry import Geometry
from fastdata.transforms.plan import Plan
from fastdata.transforms.stages import jpeg as jpegbatch

pytestmark = pytest.mark.skipif(
    not (roi.available() and jpegbatch.available()), reason="no C compiler or libjpeg here"
)

def _per_sample(data: bytes, params, size, kind: int) -> np.ndarray:
    """The per-sample path's pixels for the box and flips the stage drew."""
    top, left, ch, cw, flip_y, flip_x = (int(v) for v in params)
    arr = decode_image(data)
    geom = Geometry(*arr.shape[:2])
    geom.crop((top, left), (ch, cw))
    geom.resize(*size, kind, True)
    if flip_x:
        geom.flip(1)
    if flip_y:
        geom.flip(0)
    out = np.empty((*size, 3), np.uint8)
    Plan._render(arr, geom, out)
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_pixels_equal_the_per_sample_path(kind, interpolation):
    rng = np.random.default_rng()
    sources = [
        _jpeg(rng, int(rng.integers(40, 260)), int(rng.integers(40, 260)), **dict(KINDS[kind]))
        for _ in range(6)
    ]
    size = (int(rng.integers(64, 100)), int(rng.integers(64, 100)))  # < 4x: no DCT scaling
    plan = F.Compose(
        [
            F.RandomResizedCrop(size, interpolation=interpolation),
            F.RandomHorizontalFlip(),
            F.RandomVerticalFlip(),
        ]
    ).plan()
    assert type(plan._stage).__name__ == "JpegCropStage"
    out = np.zeros((len(sources), *size, 3), np.uint8)
    key = rng.integers(0, 2**63, 2).astype(np.uint64)
    done, params = plan._stage.run(sources, range(len(sources)), key, out)
    assert done.all()
    for data, got, p in zip(sources, out, params, strict=True):
        ref = _per_sample(data, p, size, 1 if interpolation == "bilinear" else 2)
        assert np.array_equal(got, ref), p


def test_boxes_follow_torchvisions_rule():
    h, w, n = 300, 420, 3000
    data = _jpeg(np.random.default_rng(0), h, w)
    steps = [F.DecodeImage(reduce=False), F.RandomResizedCrop(16), F.RandomHorizontalFlip(0.3)]
    stage = F.Compose(steps).plan()._stage
    key = np.random.default_rng().integers(0, 2**63, 2).astype(np.uint64)
    out = np.zeros((n, 16, 16, 3), np.uint8)
    done, params = stage.run([data] * n, range(n), key, out)
    assert done.all()
    top, left, ch, cw = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
    torch.manual_seed(int(key[0] % 2**31))
    img = torch.zeros(3, h, w)
    ref = np.array(
        [TvRandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    )
    for ours, theirs in (
        (ch * cw, ref[:, 2] * ref[:, 3]),
        (np.log(cw / ch), np.log(ref[:, 3] / ref[:, 2])),
        (top / (h - ch + 1), ref[:, 0] / (h - ref[:, 2] + 1)),
    ):
        assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
    flips = params[:, 5].sum()
    assert stats.binomtest(int(flips), n, 0.3).pvalue > 1e-3
    assert not params[:, 4].any()  # no vertical flip in this pipeline


def test_draws_are_a_function_of_key_and_index():
    rng = np.random.default_rng()
    sources = [_jpeg(rng, 120, 150) for _ in range(5)]
    stage = F.Compose([F.RandomResizedCrop(32), F.RandomHorizontalFlip()]).plan()._stage
    key = rng.integers(0, 2**63, 2).astype(np.uint64)
    runs = []
    for order in (range(5), reversed(range(5))):
        order = list(order)
        out = np.zeros((5, 32, 32, 3), np.uint8)
        _, params = stage.run([sources[i] for i in order], order, key, out)
        back = np.argsort(order)
        runs.append((out[back], params[back]))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    other = np.zeros((5, 32, 32, 3), np.uint8)
    _, params = stage.run(sources, range(5), key ^ np.uint64(1), other)
    assert not np.array_equal(params, runs[0][1])


def test_declines_what_the_per_sample_path_must_handle():
    rng = np.random.default_rng()
    good = _jpeg(rng, 100, 120)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(png, format="PNG")
    cmyk = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "CMYK").save(
        cmyk, format="JPEG"
    )
    sources = [good, png.getvalue(), good[: len(good) // 2], None, b"", cmyk.getvalue(), good]
    plan = F.Compose([F.RandomResizedCrop(24)]).plan()
    out = np.full((len(sources), 24, 24, 3), 7, np.uint8)
    done = plan.chunk_into(sources, list(range(len(sources))), np.zeros(2, np.uint64), out)
    assert done.tolist() == [True, False, False, False, False, False, True]
    assert (out[1:6] == 7).all()  # declined slots are left alone


def test_boxes_that_shrink_enough_for_dct_scaling_are_declined():
    data = _jpeg(np.random.default_rng(), 900, 1000)
    out = np.zeros((8, 16, 16, 3), np.uint8)
    key = np.zeros(2, np.uint64)
    reduced = F.Compose([F.DecodeImage(reduce=True), F.RandomResizedCrop(16, scale=(0.5, 1.0))]).plan()
    assert not reduced._stage.run([data] * 8, range(8), key, out)[0].any()
    whole = F.Compose([F.DecodeImage(reduce=False), F.RandomResizedCrop(16, scale=(0.5, 1.0))])
    assert whole.plan()._stage.run([data] * 8, range(8), key, out)[0].all()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_frame_header_size_matches_pillow(kind):
    rng = np.random.default_rng()
    h, w = int(rng.integers(1, 400)), int(rng.integers(1, 400))
    data = _jpeg(rng, max(h, 8), max(w, 8), **dict(KINDS[kind]))
    with Image.open(io.BytesIO(data)) as img:
        expected = (img.height, img.width)
    assert jpegbatch.jpeg_size(np.frombuffer(data, np.uint8)) == expected == image_size(data)
    assert jpegbatch.jpeg_size(np.frombuffer(b"\x89PNG\r\n\x1a\n", np.uint8)) == (0, 0)
