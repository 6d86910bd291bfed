"""ShardDataset: split, shuffle, equal batches, fields, references (webdataset, torchvision)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from shard_fixtures import write_image_shards

from fastdata import transforms as T
from fastdata.loading.fields import Padded, decode_npy
from fastdata.loading.shard_dataset import ShardDataset

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def aug():
    return T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])  # fmt: skip


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b[1]]


# -- the stream ------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_unshuffled_stream_matches_webdataset_reader(tmp_path, workers):
    wds = pytest.importorskip("webdataset")
    urls, _ = write_image_shards(str(tmp_path), 45, 10)
    ds = ShardDataset(urls, transform=aug(), fields=("__key__", "cls"))
    got = keys_of(ds.iter_batches(4, num_workers=workers))
    ref = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert got == ref  # workers make batches in parallel; the order is the shards'


def test_images_match_torchvision_on_the_same_pixels(tmp_path):
    tv = pytest.importorskip("torchvision.transforms.v2")
    urls, pixels = write_image_shards(str(tmp_path), 20, 6)
    pipeline = T.Compose([T.CenterCrop(8), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    ref = tv.Compose([tv.CenterCrop(8), tv.ToDtype(torch.float32, scale=True), tv.Normalize(MEAN, STD)])
    for images, keys, labels in ShardDataset(urls, transform=pipeline, fields=("__key__", "cls")).iter_batches(6):
        for img, key, label in zip(images, keys, labels, strict=True):
            expect = ref(torch.from_numpy(pixels[key]).permute(2, 0, 1))
            torch.testing.assert_close(img, expect, atol=1e-6, rtol=0)
            assert int(label) == int(key[1:]) % 7


def test_shuffle_is_seeded_permutation_and_changes_every_epoch(tmp_path):
    urls, pixels = write_image_shards(str(tmp_path), 60, 7)

    def epochs(seed, n=2):
        ds = ShardDataset(urls, transform=aug(), fields=("__key__",), shuffle=True, buffer_size=16, seed=seed)
        return [keys_of([[None, k] for (_, k) in ds.iter_batches(8, num_workers=2)]) for _ in range(n)]

    e0, e1 = epochs(5)
    assert sorted(e0) == sorted(e1) == sorted(pixels)
    assert e0 != e1 and e0 != sorted(e0)
    assert epochs(5) == [e0, e1]
    assert epochs(6)[0] != e0


@pytest.mark.parametrize("world,workers,per_shard", [(2, 2, 5), (3, 1, 4), (2, 3, 30), (4, 2, 61)])
def test_ranks_are_disjoint_cover_and_have_equal_batches(tmp_path, world, workers, per_shard):
    urls, pixels = write_image_shards(str(tmp_path), 61, per_shard)
    seen, lengths = [], []
    for rank in range(world):
        ds = ShardDataset(urls, transform=aug(), fields=("__key__",), shuffle=True, buffer_size=8,
                          seed=1, rank=rank, world_size=world)  # fmt: skip
        batches = list(ds.iter_batches(4, num_workers=workers))
        lengths.append(len(batches))
        seen.append([k for _, ks in batches for k in ks])
    assert len(set(lengths)) == 1
    flat = [k for s in seen for k in s]
    assert sorted(flat) == sorted(pixels)  # every sample exactly once: disjoint and a cover
    assert max(map(len, seen)) - min(map(len, seen)) <= 1


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_the_order_does_not_depend_on_ranks_or_workers(tmp_path, workers):
    urls, _ = write_image_shards(str(tmp_path), 50, 6)

    def stream(world):
        out = []
        for rank in range(world):
            ds = ShardDataset(urls, transform=aug(), fields=("__key__",), shuffle=True, buffer_size=10,
                              seed=4, rank=rank, world_size=world)  # fmt: skip
            out += [(k, img) for imgs, ks in ds.iter_batches(3, num_workers=workers) for k, img in zip(ks, imgs, strict=True)]
        return out

    one = stream(1)
    for world in (2, 3):
        other = stream(world)
        assert [k for k, _ in other] == [k for k, _ in one]  # ranks take consecutive stretches
        for (_, a), (_, b) in zip(one, other, strict=True):
            assert torch.equal(a, b)  # and every sample has the same crop and flip


def test_raw_pixel_shards_give_the_same_batches_as_png(tmp_path):
    # deterministic geometry: the raw kernel and the per-sample PNG path agree exactly
    # (random crops and flips are drawn differently, see tests/test_batches.py)
    png, _ = write_image_shards(str(tmp_path / "png"), 25, 8, seed=3)
    raw, _ = write_image_shards(str(tmp_path / "raw"), 25, 8, seed=3, raw=True)
    pipe = T.Compose([T.CenterCrop(8), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    a = [b for b in ShardDataset(png, transform=pipe, shuffle=True, seed=2).iter_batches(5)]
    b = [b for b in ShardDataset(raw, transform=pipe, shuffle=True, seed=2).iter_batches(5)]
    for (ia, la), (ib, lb) in zip(a, b, strict=True):
        torch.testing.assert_close(ia, ib, atol=0, rtol=0)
        assert torch.equal(la, lb)


def test_normalise_only_pipeline_on_chw_arrays(tmp_path):
    from fastdata.shards.writer import ShardWriter

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (10, 3, 6, 5), dtype=np.uint8)
    with ShardWriter(str(tmp_path / "a-%03d.tar"), maxcount=4) as sink:
        for i, a in enumerate(arrays):
            sink.write({"__key__": f"k{i}", "npy": a, "cls": i})
    pipe = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    ds = ShardDataset(str(tmp_path / "a-{000..002}.tar"), transform=pipe)
    images = torch.cat([x for x, _ in ds.iter_batches(4, num_workers=2)])
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(images, (torch.from_numpy(arrays).float() / 255 - mean) / std)


def test_non_image_fields_are_decoded_and_tokens_padded(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 23, 6, extra=True)
    ds = ShardDataset(urls, transform=None, fields=("__key__", "cls", "json", "txt"))
    ds_typed = ShardDataset(urls, transform=None, fields={"tokens.npy": "tokens"})
    n = 0
    for (keys, cls, js, txt), (tokens,) in zip(ds.iter_batches(5), ds_typed.iter_batches(5), strict=True):
        assert isinstance(tokens, Padded) and tokens.values.dtype == torch.int64
        for row, key in enumerate(keys):
            i = int(key[1:])
            assert int(cls[row]) == i % 7 and js[row] == {"i": i, "name": key} and txt[row] == f"caption {i}"
            length = i % 5 + 1
            assert tokens.mask[row].sum() == length and not tokens.mask[row, length:].any()
            assert tokens.values[row, :length].tolist() == list(range(i, i + length))
            assert (tokens.values[row, length:] == 0).all()
        assert tokens.values.shape[1] == max(int(k[1:]) % 5 + 1 for k in keys)
        n += len(keys)
    assert n == 23


def test_variable_length_arrays_without_tokens_kind_say_how_to_fix(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 10, 5, extra=True)
    with pytest.raises(ValueError, match="tokens"):
        list(ShardDataset(urls, fields=("tokens.npy",)).iter_batches(5))


def test_decode_npy_matches_numpy(tmp_path):
    import io

    for arr in [np.arange(12, dtype=np.int16).reshape(3, 4), np.zeros((2, 3), order="F"), np.float32(3.5) * np.ones(())]:
        buf = io.BytesIO()
        np.save(buf, arr)
        np.testing.assert_array_equal(decode_npy(buf.getvalue()), arr)


@pytest.mark.slow
def test_torch_dataloader_gets_single_samples_split_by_worker(tmp_path):
    urls, pixels = write_image_shards(str(tmp_path), 40, 5)
    ds = ShardDataset(urls, transform=aug(), fields=("__key__", "cls"))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn")
    seen = collections.Counter(k for _, keys, _ in loader for k in keys)
    assert set(seen) == set(pixels) and set(seen.values()) == {1}


def test_torch_dataloader_without_workers_collates_single_samples(tmp_path):
    urls, pixels = write_image_shards(str(tmp_path), 13, 5)
    ds = ShardDataset(urls, transform=aug(), fields=("__key__", "cls"))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4))
    assert [len(k) for _, k, _ in batches] == [4, 4, 4, 1]
    assert batches[0][0].shape == (4, 3, 8, 8) and batches[0][0].dtype == torch.float32
    assert sorted(k for _, keys, _ in batches for k in keys) == sorted(pixels)


def test_fastdata_dataloader_uses_the_stream(tmp_path):
    import fastdata.loading.dataloader

    urls, _ = write_image_shards(str(tmp_path), 30, 5)
    ds = ShardDataset(urls, transform=aug(), shuffle=True, seed=4)
    loader = fastdata.loading.dataloader.DataLoader(ds, batch_size=8, num_workers=2)
    direct = list(ShardDataset(urls, transform=aug(), shuffle=True, seed=4).iter_batches(8, num_workers=2))
    got = list(loader)
    assert len(got) == len(direct)
    for (a, la), (b, lb) in zip(got, direct, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert loader.state_dict() == ds.state_dict() and loader.state_dict()["epoch"] == 1  # the next epoch
    # an ordinary dataset has the iterator's state instead (tests/test_resume.py)
    assert fastdata.loading.dataloader.DataLoader(list(range(4))).state_dict()["_num_yielded"] == 0


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"timeout": -1}, "timeout"), ({"timeout": float("nan")}, "timeout"),
    ({"prefetch": 0}, "prefetch"), ({"prefetch": -3}, "prefetch"),
    ({"num_workers": -1}, "num_workers"), ({"num_workers": 1.5}, "num_workers"),
])  # fmt: skip
def test_iter_batches_validates_its_arguments(tmp_path, kwargs, name):
    urls, _ = write_image_shards(str(tmp_path), 8, 4)
    args = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        ShardDataset(urls, transform=T.Compose([T.CenterCrop(8)])).iter_batches(
            args.pop("batch_size"), **args
        )


@pytest.mark.parametrize("kwargs", [{"buffer_size": -5, "shuffle": True}, {"buffer_size": -1},
                                    {"buffer_size": 1, "shuffle": True}, {"buffer_size": 2.5}])  # fmt: skip
def test_buffer_size_is_validated(tmp_path, kwargs):
    urls, _ = write_image_shards(str(tmp_path), 4, 4)
    with pytest.raises(ValueError, match="buffer_size"):
        ShardDataset(urls, **kwargs)


def test_dataloader_rejects_prefetch_factor_zero_like_torch(tmp_path):
    """torch's DataLoader fails on prefetch_factor=0 with workers (when iterating); we fail at once."""
    import fastdata

    data = torch.utils.data.TensorDataset(torch.arange(8))
    with pytest.raises((AssertionError, ValueError)):
        list(torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, prefetch_factor=0))
    for compile_ in (False, True):
        with pytest.raises(ValueError, match="prefetch_factor"):
            fastdata.DataLoader(data, batch_size=2, num_workers=2, prefetch_factor=0, compile=compile_)
# -- len(), index-less shards, token fields under torch's DataLoader ---------------------------


@pytest.mark.parametrize("index", [True, False])
@pytest.mark.parametrize("world, workers, drop_last", [(1, 0, False), (1, 2, False), (2, 2, True)])
def test_len_counts_what_an_epoch_yields(tmp_path, index, world, workers, drop_last):
    """len() of the dataset is this rank's samples, of fastdata's and torch's DataLoader the
    batches they yield (as pytorch/examples' ImageNet script and torchvision's logger ask)."""
    import fastdata.loading.dataloader

    urls, _ = write_image_shards(str(tmp_path), 37, 5, index=index)
    for rank in range(world):
        kw = {"fields": ("__key__",), "shuffle": True, "seed": 1, "drop_last": drop_last}
        if world > 1:
            kw.update(rank=rank, world_size=world)
        ds = ShardDataset(urls, transform=aug(), **kw)
        assert len(ds) == sum(1 for _ in ShardDataset(urls, transform=aug(), **kw))
        loader = fastdata.loading.dataloader.DataLoader(ds, batch_size=4, num_workers=workers)
        assert len(loader) == len(list(loader))
        if world == 1 and workers == 0:
            torch_loader = torch.utils.data.DataLoader(ds, batch_size=4)
            assert len(torch_loader) == len(list(torch_loader))


def test_index_less_webdataset_shards_through_every_loader(tmp_path):
    """Shards written by the webdataset library (no index) work with iter_batches, fastdata's
    DataLoader (len() included) and torch's DataLoader."""
    wds = pytest.importorskip("webdataset")
    import fastdata.loading.dataloader

    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(tmp_path / "w-%06d.tar"), maxcount=10, verbose=0) as sink:
        for i in range(40):
            sink.write({"__key__": f"s{i:03d}", "npy": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "cls": i % 4})
    urls = str(tmp_path / "w-{000000..000003}.tar")
    ds = ShardDataset(urls, transform=aug(), fields=("__key__",))
    loader = fastdata.loading.dataloader.DataLoader(ds, batch_size=8, num_workers=2)
    batches = list(loader)
    keys = [k for _, batch in batches for k in batch]
    assert sorted(keys) == [f"s{i:03d}" for i in range(40)]
    assert len(loader) == len(batches) == 5 and len(ds) == 40  # workers do not change the batches
    assert sum(len(k) for _, k in torch.utils.data.DataLoader(ds, batch_size=8)) == 40


def test_token_fields_collate_under_torch_dataloader_without_warnings(tmp_path):
    """torch's DataLoader pads token fields into the Padded batch fastdata's loader gives,
    and no read-only NumPy view reaches torch (no 'not writable' warning)."""
    import warnings

    import fastdata.loading.dataloader

    urls, _ = write_image_shards(str(tmp_path), 23, 6, extra=True, raw=True)  # raw: an .npy array field
    fields = {"__key__": "text", "tokens.npy": "tokens", "npy": "array"}
    ds = ShardDataset(urls, transform=None, fields=fields, pad_value=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theirs = list(torch.utils.data.DataLoader(ds, batch_size=5))
        ours = list(fastdata.loading.dataloader.DataLoader(ds, batch_size=5, num_workers=0))
    assert len(theirs) == len(ours) == 5
    for (keys, tokens, arrays), (keys2, tokens2, arrays2) in zip(theirs, ours, strict=True):
        assert list(keys) == list(keys2) and isinstance(tokens, Padded)
        assert torch.equal(tokens.values, tokens2.values) and torch.equal(tokens.mask, tokens2.mask)
        assert torch.equal(arrays, arrays2)
        lengths = [int(k[1:]) % 5 + 1 for k in keys]  # independent reference: what was written
        expected = np.full((len(keys), max(lengths)), -1)
        for row, (key, n) in enumerate(zip(keys, lengths, strict=True)):
            expected[row, :n] = np.arange(n) + int(key[1:])
        np.testing.assert_array_equal(tokens.values.numpy(), expected)
@pytest.mark.parametrize("raw", [False, True], ids=["png", "raw"])
def test_pixel_stage_and_erasing_apply_on_every_path(tmp_path, raw):
    # the PNG batch-level stage and the raw gather kernel must not skip the pixel stage
    urls, _ = write_image_shards(str(tmp_path), 25, 8, seed=3, raw=raw)
    # random geometry for PNGs (the batch-level stage takes it); the raw per-sample path
    # draws crops differently from the gather kernel, so there the geometry is fixed
    geometry = [T.CenterCrop(8)] if raw else [T.RandomCrop(8, padding=2), T.RandomHorizontalFlip()]
    invert = T.AutoAugment(policies=[(("Invert", 1.0, None), ("Invert", 0.0, None))])
    tail = [T.ToDtype(torch.float32, scale=True)]
    plain = [x for x, _ in ShardDataset(urls, transform=T.Compose([*geometry, *tail]), seed=2).iter_batches(5)]
    inverted = [x for x, _ in ShardDataset(urls, transform=T.Compose([*geometry, invert, *tail]), seed=2).iter_batches(5)]
    for a, b in zip(plain, inverted, strict=True):
        torch.testing.assert_close(b, 1.0 - a, atol=1e-6, rtol=0)
    erase = T.RandomErasing(p=1.0, scale=(0.3, 0.3), ratio=(1.0, 1.0), value=-5.0)
    erased = torch.cat([x for x, _ in ShardDataset(urls, transform=T.Compose([*geometry, *tail, erase]), seed=2).iter_batches(5)])
    assert ((erased == -5.0).flatten(1).float().mean(1) > 0.2).all()
