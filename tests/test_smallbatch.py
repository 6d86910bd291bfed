"""The small-PNG batch stage against Pillow + NumPy, its draws, and the loader around it."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
import torch.utils.data as tud
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_png import encode_png, random_pixels
from torchvision import datasets
from torchvision import transforms as T

from fastdata.errors import DecodeError
from fastdata.loading.dataloader import DataLoader
from fastdata.transforms.ops import RandomCrop
from fastdata.transforms.stages import png as smallbatch
from fastdata.transforms.stages.png import SmallPngStage, draw_uniforms

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INFLATERS = [False, pytest.param(True, marks=pytest.mark.skipif(
    not smallbatch.HAVE_LIBDEFLATE, reason="libdeflate is not installed"))]  # fmt: skip
NP_PAD = {"constant": "constant", "edge": "edge", "reflect": "reflect", "symmetric": "symmetric"}


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def uniforms(key, index: int, count: int) -> list[float]:
    """NOTE [ Counter-based draws ] in Python integers."""
    k0, k1 = int(key[0]), int(key[1])
    s = _mix(k0 ^ _mix((k1 + index * GOLDEN) & MASK))
    return [(_mix((s + (j + 1) * GOLDEN) & MASK) >> 11) / 2.0**53 for j in range(count)]


def reference(data: bytes, key, index: int, crop: RandomCrop, flips) -> tuple[np.ndarray, tuple]:
    """Pillow decode, ``np.pad``, crop and ``np.flip`` with the draws of the reference hash."""
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    u = uniforms(key, index, 2 + len(flips))
    left, top, right, bottom = crop.padding
    pads, offsets = [], []
    for a, (before, after) in enumerate(((top, bottom), (left, right))):
        n, size = img.shape[a], crop.size[a]
        if crop.pad_if_needed and n + before + after < size:
            diff = size - (n + before + after)
            before, after = before + diff, after + diff
        padded = n + before + after
        if padded < size:
            return None, None
        pads.append((before, after))
        offsets.append(int(u[a] * (padded - size + 1)) if padded > size else 0)
    mode = NP_PAD[crop.padding_mode]
    kw = {"constant_values": 0} if mode == "constant" else {}
    planes = [np.pad(img[:, :, c], pads, mode=mode, **kw) for c in range(3)]
    if mode == "constant":
        planes = [np.pad(img[:, :, c], pads, constant_values=crop.fill[c]) for c in range(3)]
    padded = np.stack(planes, axis=2)
    (y0, x0), (h, w) = offsets, crop.size
    out = padded[y0 : y0 + h, x0 : x0 + w]
    flip = [False, False]
    for k, (p, axis) in enumerate(flips):
        if u[2 + k] < p:
            flip[axis] = not flip[axis]
    if flip[0]:
        out = out[::-1]
    if flip[1]:
        out = out[:, ::-1]
    params = (offsets[0] - pads[0][0], offsets[1] - pads[1][0], int(flip[0]), int(flip[1]))
    return np.ascontiguousarray(out), params


def test_draws_match_the_reference_hash():
    key = np.random.default_rng(1).integers(0, 2**63, 2, dtype=np.uint64) * np.uint64(2) + 1
    indices = np.array([0, 1, 2, 77, 2**31, 2**40 + 3], np.int64)
    got = draw_uniforms(key, indices, 5)
    for row, index in zip(got, indices, strict=True):
        np.testing.assert_array_equal(row, uniforms(key, int(index), 5))


@given(
    sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=6),
    ctype=st.sampled_from([0, 2, 4, 6]),
    crop=st.sampled_from([(16, 3), (24, 4), (8, 0), (32, 2)]),
    pad_if_needed=st.booleans(),
    padding_mode=st.sampled_from(["constant", "edge", "reflect", "symmetric"]),
    flips=st.sampled_from([[], [(0.5, 1)], [(0.5, 0), (0.7, 1)], [(1.0, 1), (1.0, 1)]]),
    deflate=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=80, deadline=None)
def test_stage_matches_pillow_and_numpy(
    sizes, ctype, crop, pad_if_needed, padding_mode, flips, deflate, seed
):
    rng = np.random.default_rng(seed)
    size, padding = crop
    rc = RandomCrop(size, padding, pad_if_needed, (7, 100, 250), padding_mode)
    stage = SmallPngStage(rc, flips, deflate=deflate)
    sources = []
    for h, w in sizes:
        pixels = random_pixels(rng, h, w, ctype)
        filters = [int(f) for f in rng.integers(0, 5, h)]
        sources.append(encode_png(pixels, ctype, filters, int(rng.integers(1, 3))))
    key = rng.integers(0, 2**63, 2, dtype=np.uint64)
    indices = [int(i) for i in rng.integers(0, 10**6, len(sources))]
    out = np.full((len(sources), size, size, 3), 13, np.uint8)
    done, params = stage.run(sources, indices, key, out)
    for i, data in enumerate(sources):
        expected, drawn = reference(data, key, indices[i], rc, flips)
        if expected is None:  # smaller than the crop: declined, the general path raises
            assert not done[i] and (out[i] == 13).all()
            continue
        assert done[i]
        assert tuple(params[i]) == drawn
        np.testing.assert_array_equal(out[i], expected)


def _pil_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("deflate", INFLATERS)
def test_declines_what_it_does_not_decode_and_leaves_the_slot(deflate):
    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    good = _pil_png(rgb)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG")
    corrupt = bytearray(good)
    at = corrupt.index(b"IDAT") + 30
    corrupt[at : at + 20] = bytes(20)
    interlaced = bytearray(good)
    interlaced[28] = 1  # IHDR interlace flag (the CRC is not checked, the flag is read)
    sources = [
        good,
        _pil_png(rgb.convert("P")),  # palette
        _pil_png(Image.fromarray(rng.integers(0, 2**16, (20, 20), dtype=np.uint16))),
        buf.getvalue(),  # JPEG
        bytes(corrupt),
        good[: len(good) // 2],  # truncated
        bytes(interlaced),
        None,  # a file that could not be read
        b"",
        np.zeros((20, 20, 3), np.uint8),  # not bytes
        good,
    ]
    out = np.full((len(sources), 16, 16, 3), 9, np.uint8)
    done, _ = SmallPngStage(RandomCrop(16), [], deflate=deflate).run(
        sources, range(len(sources)), np.array([3, 4], np.uint64), out
    )
    assert done.tolist() == [True] + [False] * 9 + [True]
    assert (out[1:-1] == 9).all()


@pytest.mark.parametrize("deflate", INFLATERS)
def test_crop_offsets_and_flips_are_uniform_and_independent(deflate):
    stats = pytest.importorskip("scipy.stats")
    data = _pil_png(Image.fromarray(np.zeros((32, 32, 3), np.uint8)))
    n = 9000
    out = np.empty((n, 32, 32, 3), np.uint8)
    stage = SmallPngStage(RandomCrop(32, 4), [(0.5, 1)], deflate=deflate)
    done, params = stage.run([data] * n, range(n), np.array([11, 12], np.uint64), out)
    assert done.all()
    top, left, flip = params[:, 0] + 4, params[:, 1] + 4, params[:, 3]
    for v in (top, left):
        counts = np.bincount(v, minlength=9)
        assert len(counts) == 9
        assert stats.chisquare(counts).pvalue > 1e-4
    joint = np.bincount(top * 9 + left, minlength=81)
    assert stats.chisquare(joint).pvalue > 1e-4
    assert stats.binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-4
    assert stats.chisquare(np.bincount(flip * 9 + top, minlength=18)).pvalue > 1e-4
    other = stage.run([data] * 64, range(64), np.array([11, 13], np.uint64), out[:64])[1]
    assert not np.array_equal(other, params[:64])  # the key matters


# -- through the loader --------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> str:
    """Two classes of 32x32 (and a few other sizes) RGB/gray/RGBA PNGs, plus one JPEG."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(40):
            h, w = (32, 32) if i % 5 else (int(rng.integers(24, 40)), int(rng.integers(24, 40)))
            pixels = random_pixels(rng, h, w, 2)
            mode = ("RGB", "L", "RGBA", "RGB")[i % 4]
            img = Image.fromarray(pixels).convert(mode)
            img.save(root / f"c{c}" / f"{i:03d}.png")
        Image.fromarray(random_pixels(rng, 32, 32, 2)).save(root / f"c{c}" / "jpeg.jpg")
    return str(root)


def _cifar(folder: str, padding: int = 4, flip: bool = True) -> datasets.ImageFolder:
    steps = [T.RandomCrop(32, padding=padding)] + ([T.RandomHorizontalFlip()] if flip else [])
    return datasets.ImageFolder(folder, T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)]))


def _epochs(ds, seed: int, epochs: int = 1, **kwargs) -> list[list]:
    dl = DataLoader(ds, compile=True, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert dl.compiled is not None
    return [list(dl) for _ in range(epochs)]


def test_loader_uses_the_stage_and_picks_threads_for_png_folders(png_folder):
    dl = DataLoader(_cifar(png_folder), batch_size=8, num_workers=2, compile=True)
    assert dl.compiled.batch_stage and dl.compiled.plan.has_batch_stage
    assert not dl._use_processes()


def test_same_seed_same_batches_in_every_worker_mode(png_folder):
    ds = _cifar(png_folder)
    args = {"batch_size": 16, "shuffle": True}
    a = _epochs(ds, 4, 2, num_workers=2, worker_mode="threads", **args)
    for kwargs in (
        {"num_workers": 2, "worker_mode": "threads"},
        {"num_workers": 2, "worker_mode": "processes"},
        {"num_workers": 0},
        {"num_workers": 1},
    ):
        b = _epochs(ds, 4, 2, **kwargs, **args)
        for ea, eb in zip(a, b, strict=True):
            for (x, y), (u, v) in zip(ea, eb, strict=True):
                assert torch.equal(x, u) and torch.equal(y, v)
    first, second = (torch.cat([x for x, _ in e]) for e in a)
    assert not torch.equal(first, second)  # epochs differ
    assert not torch.equal(first, torch.cat([x for x, _ in _epochs(ds, 5, **args)[0]]))


def test_deterministic_pipeline_equals_torchvision(png_folder):
    """No padding and no flip on 32x32 images: the stage must reproduce torchvision exactly."""
    ds = datasets.ImageFolder(
        png_folder,
        T.Compose([T.RandomCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)]),
    )
    ds.samples = [s for s in ds.samples if s[0].endswith(".png")]
    ds.samples = [s for s in ds.samples if Image.open(s[0]).size == (32, 32)]
    ours = _epochs(ds, 0, batch_size=8, num_workers=2)[0]
    theirs = list(tud.DataLoader(ds, batch_size=8))
    for (x, y), (u, v) in zip(ours, theirs, strict=True):
        torch.testing.assert_close(x, u, atol=1e-6, rtol=0)
        assert torch.equal(y, v)


def _copy_folder(src: str, dst) -> None:
    for cls in sorted(os.listdir(src)):
        os.makedirs(dst / cls)
        for name in sorted(os.listdir(os.path.join(src, cls))):
            with open(os.path.join(src, cls, name), "rb") as fh:
                (dst / cls / name).write_bytes(fh.read())


@pytest.mark.parametrize("worker_mode", ["threads", "processes"])
def test_corrupt_png_raises_naming_the_file_or_is_skipped(png_folder, tmp_path, worker_mode):
    _copy_folder(png_folder, tmp_path)
    bad = tmp_path / "c1" / "007.png"
    data = bytearray(bad.read_bytes())
    at = data.index(b"IDAT") + 30
    data[at : at + 20] = bytes(20)  # zlib's checksum fails
    bad.write_bytes(bytes(data))
    ds = _cifar(str(tmp_path))
    kwargs = {"batch_size": 16, "num_workers": 2, "worker_mode": worker_mode}
    with pytest.raises(DecodeError, match="007.png"):
        _epochs(ds, 0, **kwargs)
    dl = DataLoader(ds, compile=True, on_error="skip", **kwargs)
    sizes = [len(y) for _, y in dl]
    assert sizes == [16] * (len(ds) // 16) + ([len(ds) % 16] if len(ds) % 16 else [])
    assert dl.stats.skipped == 1 and "007.png" in dl.stats.skipped_keys[0]
    bad.unlink()  # a file gone after the folder was listed
    with pytest.raises(DecodeError, match="007.png"):
        _epochs(ds, 0, **kwargs)
