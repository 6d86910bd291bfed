"""The batch path: raw-pixel kernel against a NumPy reference, skips, output reuse."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdata import transforms as T
from fastdata.errors import ShardError
from fastdata.loading.shard_dataset import ShardDataset
from fastdata.shards.writer import ShardWriter
from fastdata.transforms.stages.raw import crop_spec, draw_params, param_key

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def reference(img: np.ndarray, oy: int, ox: int, hf: bool, vf: bool, size, fill=0) -> np.ndarray:
    """Pad, crop, flip and normalise one HWC image in float64 NumPy."""
    h, w = img.shape[:2]
    pad = max(size[0], size[1]) + max(h, w)
    canvas = np.full((h + 2 * pad, w + 2 * pad, 3), fill, np.float64)
    canvas[pad : pad + h, pad : pad + w] = img
    crop = canvas[pad + oy : pad + oy + size[0], pad + ox : pad + ox + size[1]]
    crop = crop[:, ::-1] if hf else crop
    crop = crop[::-1] if vf else crop
    return ((crop / 255 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


def write_raw(folder, n, per_shard, chw: bool, seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    with ShardWriter(str(folder / "r-%03d.tar"), maxcount=per_shard) as sink:
        for i in range(n):
            img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            pixels[f"k{i:04d}"] = img
            sink.write(
                {
                    "__key__": f"k{i:04d}",
                    "npy": img.transpose(2, 0, 1).copy() if chw else img,
                    "cls": i,
                }
            )
    return str(folder / f"r-{{000..{(n - 1) // per_shard:03d}}}.tar"), pixels


@pytest.mark.parametrize(
    "chw,channels_last,workers", [(False, False, 2), (True, False, 0), (False, True, 1)]
)
def test_raw_kernel_matches_numpy_reference(tmp_path, chw, channels_last, workers):
    urls, pixels = write_raw(tmp_path, 37, 8, chw, seed=int(chw))
    ops = [
        T.RandomCrop((8, 9), padding=(1, 2, 3, 4)),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(0.3),
    ]
    pipe = T.Compose([*ops, T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    ds = ShardDataset(
        urls, transform=pipe, fields=("__key__", "cls"), shuffle=True, buffer_size=10, seed=5
    )
    spec = crop_spec(ops, 10, 12)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for epoch in range(2):
        key, pos, flips = param_key(5, epoch, 0), 0, 0
        for images, keys, labels in ds.iter_batches(6, num_workers=workers, memory_format=fmt):
            assert images.is_contiguous(memory_format=fmt)
            p = draw_params(spec, key, np.arange(pos, pos + len(keys)))
            for r, k in enumerate(keys):
                expect = reference(pixels[k], p.oy[r], p.ox[r], p.hf[r], p.vf[r], (8, 9))
                np.testing.assert_allclose(images[r].double().numpy(), expect, atol=2e-6, rtol=0)
                assert int(labels[r]) == int(k[1:])
            pos, flips = pos + len(keys), flips + int(p.hf.sum())
        assert 0 < flips < pos and pos == 37


@pytest.mark.parametrize("chw,channels_last", [(True, False), (False, False), (True, True)])
def test_raw_kernel_normalise_only_matches_numpy_reference(tmp_path, chw, channels_last):
    # no crop and no flip: channels-first sources take the whole-plane kernel
    urls, pixels = write_raw(tmp_path, 21, 8, chw, seed=3 + int(chw))
    pipe = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    ds = ShardDataset(
        urls, transform=pipe, fields=("__key__",), shuffle=True, buffer_size=10, seed=2
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seen = 0
    for images, keys in ds.iter_batches(5, num_workers=2, memory_format=fmt):
        assert images.is_contiguous(memory_format=fmt)
        for r, k in enumerate(keys):
            expect = reference(pixels[k], 0, 0, False, False, (10, 12))
            np.testing.assert_allclose(images[r].double().numpy(), expect, atol=2e-6, rtol=0)
        seen += len(keys)
    assert seen == 21


def test_raw_kernel_with_odd_sample_shapes_falls_back_per_sample(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (10 + i % 2, 12, 3), dtype=np.uint8) for i in range(12)]
    with ShardWriter(str(tmp_path / "o-%03d.tar"), maxcount=6) as sink:
        for i, img in enumerate(imgs):
            sink.write({"__key__": f"k{i:02d}", "npy": img, "cls": i})
    pipe = T.Compose([T.CenterCrop(8), T.ToDtype(torch.float32, scale=True)])
    got = ShardDataset(
        str(tmp_path / "o-{000..001}.tar"), transform=pipe, fields=("cls",)
    ).iter_batches(5)
    for images, labels in got:
        for img, i in zip(images, labels.tolist(), strict=True):
            h = imgs[i].shape[0]
            top = int(round((h - 8) / 2.0))
            expect = torch.from_numpy(imgs[i][top : top + 8, 2:10]).permute(2, 0, 1).float() / 255
            torch.testing.assert_close(img, expect)


def test_corrupt_npy_header_is_skipped_and_counted(tmp_path):
    urls, pixels = write_raw(tmp_path, 16, 8, chw=False)
    path = tmp_path / "r-001.tar"
    data = bytearray(path.read_bytes())
    at = data.find(b"\x93NUMPY", 0)
    data[at : at + 6] = b"BROKEN"  # the first .npy of the second shard
    path.write_bytes(bytes(data))
    pipe = T.Compose([T.RandomCrop(8, padding=2), T.ToDtype(torch.float32, scale=True)])
    ds = ShardDataset(urls, transform=pipe, fields=("__key__",), on_error="skip")
    keys = [k for _, ks in ds.iter_batches(4, num_workers=2) for k in ks]
    assert len(keys) == 16 and "k0008" not in keys and ds.stats.skipped == 1
    with pytest.raises(Exception, match="k0008"):
        list(ShardDataset(urls, transform=pipe, fields=("__key__",)).iter_batches(4))


def test_kept_float_batches_are_never_overwritten_and_dropped_ones_are_reused(tmp_path):
    # 37 samples, batches of 6 from 2 slots: partial batches are slices of pooled batches
    urls, pixels = write_raw(tmp_path, 37, 8, chw=True, seed=7)
    pipe = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    ds = ShardDataset(
        urls, transform=pipe, fields=("__key__",), shuffle=True, buffer_size=10, seed=3
    )
    kept, delivered, again = [], {}, 0  # id -> weak reference of every delivered batch
    for epoch in range(3):
        for b, (images, keys) in enumerate(ds.iter_batches(6, num_workers=2, prefetch=1)):
            seen = delivered.get(id(images))
            again += seen is not None and seen() is images  # the same pooled batch, written again
            delivered[id(images)] = weakref.ref(images)
            if epoch == 1 and b % 3 == 0:
                kept.append((images, keys))  # the whole batch
            elif epoch == 1 and b % 3 == 1:
                kept.append((images[1:3], keys[1:3]))  # a view keeps the storage alive
            elif epoch == 2 and b % 4 == 0:
                kept.append((torch.from_numpy(images.numpy()), keys))  # an array on the storage
    assert again >= 5
    for images, keys in kept:
        for img, k in zip(images, keys, strict=True):
            expect = reference(pixels[k], 0, 0, False, False, (10, 12))
            np.testing.assert_allclose(img.double().numpy(), expect, atol=2e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(mean=st.lists(st.floats(-2, 2), min_size=3, max_size=3), std=st.lists(st.floats(0.01, 3), min_size=3, max_size=3),
       scale=st.booleans(), seed=st.integers(0, 2**32))  # fmt: skip
def test_affine_planes_equal_the_table_bit_for_bit(mean, std, scale, seed):
    from fastdata.transforms.kernels import normalize_lut
    from fastdata.transforms.stages.raw import _affine_planes, _copy_planes, affine_table

    lut = normalize_lut(mean, std, 3, torch.float32, scale).numpy()
    affine = affine_table(lut, mean, std, scale)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 5 * 3 * 70, dtype=np.uint8)
    offsets = rng.permutation(5).astype(np.int64) * 210
    want, got = np.empty((5, 3, 70), np.float32), np.empty((5, 3, 70), np.float32)
    rows = rng.permutation(5).astype(np.int64)  # sample i goes to row rows[i]
    _copy_planes(data, offsets, rows, 70, lut, want)
    expect = (data[offsets[:, None, None] + np.arange(3)[:, None] * 70 + np.arange(70)] / (255.0 if scale else 1.0)
              - np.array(mean)[:, None]) / np.array(std)[:, None]  # fmt: skip
    np.testing.assert_allclose(want[rows], expect, rtol=1e-6, atol=1e-6)
    if affine is not None:
        _affine_planes(data, offsets, rows, 70, affine[0], affine[1], got)
        assert np.array_equal(got, want)
    wrong = lut.copy()
    wrong[1, 17] = np.nextafter(wrong[1, 17], np.float32(np.inf))
    # a table it does not reproduce: the table kernel runs instead
    assert affine_table(wrong, mean, std, scale) is None


@pytest.mark.parametrize("chw", [False, True])
def test_uint8_batches_mixing_shards_match_numpy_reference(tmp_path, chw):
    # windows of two shards: a batch's samples of one shard are not adjacent rows
    urls, pixels = write_raw(tmp_path, 30, 7, chw, seed=11 + int(chw))
    ops = [T.RandomCrop((8, 9), padding=2), T.RandomHorizontalFlip()]
    ds = ShardDataset(
        urls, transform=T.Compose(ops), fields=("__key__",), shuffle=True, buffer_size=12, seed=4
    )
    spec, key, pos, mixed = crop_spec(ops, 10, 12), param_key(4, 0, 0), 0, 0
    for images, keys in ds.iter_batches(8, num_workers=2):
        p = draw_params(spec, key, np.arange(pos, pos + len(keys)))
        shards = [int(k[1:]) // 7 for k in keys]
        mixed += (
            sum(a != b for a, b in zip(shards, shards[1:], strict=False)) > len(set(shards)) - 1
        )
        for r, k in enumerate(keys):
            canvas = np.zeros((14, 16, 3), np.uint8)
            canvas[2:12, 2:14] = pixels[k]
            crop = canvas[2 + p.oy[r] : 2 + p.oy[r] + 8, 2 + p.ox[r] : 2 + p.ox[r] + 9]
            expect = torch.from_numpy(
                np.ascontiguousarray(crop[:, ::-1] if p.hf[r] else crop)
            ).permute(2, 0, 1)
            assert torch.equal(images[r], expect), k
        pos += len(keys)
    assert pos == 30 and mixed > 0


def _readable_keys(path) -> list[str]:
    """Keys Python's tarfile reads from a (possibly truncated) shard: the reference."""
    import tarfile

    keys = []
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                data = tar.extractfile(info).read()
                if len(data) == info.size and info.name.endswith(".npy"):
                    keys.append(info.name.split(".", 1)[0])
    except (tarfile.TarError, OSError):
        pass
    return keys


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_fills_batches_of_a_truncated_indexed_shard_from_elsewhere(tmp_path, workers):
    """Without shuffling, the samples a truncated shard lost fill whole batches: under
    on_error="skip" they take good samples from elsewhere in the epoch (every batch keeps
    its size, every lost sample is counted); with no good sample at all, the error names
    the shards."""
    rng = np.random.default_rng(0)
    with ShardWriter(str(tmp_path / "d-%02d.tar"), maxcount=10) as sink:  # writes the index
        for i in range(30):
            sink.write({"__key__": f"s{i:03d}", "npy": rng.integers(0, 256, (6, 6, 3), np.uint8), "cls": i})
    middle = tmp_path / "d-01.tar"
    middle.write_bytes(middle.read_bytes()[: 512 * 9])  # keeps a few samples of 10
    # The reference: what tarfile reads, less the truncated shard's last sample (its
    # other files may be what was cut off, so readers do not deliver it).
    readable = {k for n in (0, 2) for k in _readable_keys(tmp_path / f"d-{n:02d}.tar")}
    readable |= set(_readable_keys(middle)[:-1])
    assert 20 < len(readable) < 30
    ds = ShardDataset(str(tmp_path / "d-{00..02}.tar"), transform=T.Compose([T.CenterCrop(4)]),
                      fields=("__key__",), on_error="skip")  # fmt: skip
    batches = list(ds.iter_batches(4, num_workers=workers))
    assert sorted(len(keys) for _, keys in batches) == [2] + [4] * 7  # the index's 30 samples
    assert {k for _, keys in batches for k in keys} == readable
    assert ds.stats.skipped == 30 - len(readable)
    for n in range(3):
        (tmp_path / f"d-{n:02d}.tar").write_bytes(b"")
    with pytest.raises(ShardError, match="d-00.tar.*no sample of this epoch can be read"):
        list(ds.iter_batches(4, num_workers=workers))
