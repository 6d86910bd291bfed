"""Bad data, crashing readers, timeouts, and batches that must never be overwritten."""

from __future__ import annotations

import os
import time
import traceback

import numpy as np
import pytest
import torch
from shard_fixtures import write_image_shards

from fastdata import transforms as T
from fastdata.errors import DecodeError, FastdataError, ShardError
from fastdata.loading.shard_dataset import ShardDataset
from fastdata.shards.index import write_index
from fastdata.shards.writer import ShardWriter


def pipeline(dtype=torch.float32):
    steps = [T.CenterCrop(8)]
    if dtype is not None:
        steps.append(T.ToDtype(dtype, scale=True))
    return T.Compose(steps)


def write_with_bad(folder, bad: dict[int, dict]) -> tuple[str, dict]:
    """20 PNG samples in 4 shards; sample ``i`` in ``bad`` gets those fields replaced (None: removed)."""
    urls, pixels = write_image_shards(folder, 20, 5)
    from fastdata.shards.tario import iter_samples

    samples = list(iter_samples(urls))
    for f in os.listdir(folder):
        if f.endswith(".tar"):
            os.remove(os.path.join(folder, f))
    with ShardWriter(os.path.join(folder, "train-%06d.tar"), maxcount=5) as sink:
        for i, s in enumerate(samples):
            s = {k: v for k, v in s.items() if k != "__url__"}
            for field, value in bad.get(i, {}).items():
                if value is None:
                    s.pop(field)
                else:
                    s[field] = value
            sink.write(s)
    return urls, pixels


def test_bad_image_raises_naming_shard_key_and_field(tmp_path):
    urls, _ = write_with_bad(str(tmp_path), {7: {"png": b"\x89PNG\r\n\x1a\nbroken"}})
    with pytest.raises(DecodeError) as info:
        list(ShardDataset(urls, transform=pipeline()).iter_batches(4, num_workers=2))
    err = info.value
    assert err.key == "s00007" and err.field == "png" and err.url.endswith("train-000001.tar")


@pytest.mark.parametrize("policy", ["skip", "warn"])
def test_skipped_samples_are_counted_and_batches_keep_their_size(tmp_path, policy):
    bad = {3: {"png": b"garbage"}, 12: {"cls": b"x"}, 17: {"png": None}}
    urls, _ = write_with_bad(str(tmp_path), bad)
    ds = ShardDataset(urls, transform=pipeline(), fields=("__key__", "cls"), on_error=policy)
    with pytest.warns(UserWarning, match="skipped") if policy == "warn" else _nothing():
        batches = list(ds.iter_batches(5, num_workers=2))
    assert [len(b[1]) for b in batches] == [5] * 4
    keys = {k for b in batches for k in b[1]}
    assert keys.isdisjoint({"s00003", "s00012", "s00017"}) and len(keys) == 17
    assert ds.stats.skipped == 3
    assert sorted(k.rsplit(":", 1)[1] for k in ds.stats.skipped_keys) == ["s00003", "s00012", "s00017"]


def test_missing_field_raises_by_default(tmp_path):
    urls, _ = write_with_bad(str(tmp_path), {9: {"cls": None}})
    with pytest.raises(DecodeError, match="missing field") as info:
        list(ShardDataset(urls, transform=pipeline()).iter_batches(4))
    assert info.value.key == "s00009" and info.value.field == "cls"


def truncate(path: str, keep: float) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def test_truncated_shard_raises_shard_error(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 20, 5)
    truncate(str(tmp_path / "train-000002.tar"), 0.5)
    with pytest.raises(ShardError, match="train-000002.tar"):
        list(ShardDataset(urls, transform=pipeline()).iter_batches(4, num_workers=2))


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_bad_shard_with_skip_keeps_the_batch_count_of_the_index(tmp_path, damage):
    urls, _ = write_image_shards(str(tmp_path), 40, 5)
    clean = list(ShardDataset(urls, transform=pipeline(), world_size=2, rank=0).iter_batches(5, num_workers=2))
    path = str(tmp_path / "train-000003.tar")
    truncate(path, 0.5) if damage == "truncate" else os.remove(path)
    lengths = []
    for rank in range(2):
        ds = ShardDataset(urls, transform=pipeline(), world_size=2, rank=rank, on_error="skip",
                          shuffle=True, buffer_size=40)  # a batch made only of bad samples raises
        batches = list(ds.iter_batches(5, num_workers=2))
        assert all(len(b[1]) == 5 for b in batches)
        lengths.append((len(batches), ds.stats.skipped))
    assert lengths[0][0] == lengths[1][0] == len(clean)
    assert 0 < sum(s for _, s in lengths) <= 5


def test_failing_pipe_command_is_a_shard_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDATA_CACHE", str(tmp_path / "cache"))
    urls, _ = write_image_shards(str(tmp_path), 10, 5)
    good = str(tmp_path / "train-000000.tar")
    with pytest.raises(FastdataError, match="x.tar.*exited"):  # reading it to index it
        ShardDataset([good, "pipe:cat /nonexistent/x.tar"], transform=pipeline(), index="build").counts()
    index = str(tmp_path / "both.index.json")
    write_index(index, {"shards": [{"name": "train-000000.tar", "count": 5}, {"name": "x.tar", "count": 5}]})
    ds = ShardDataset([good, "pipe:cat /nonexistent/x.tar"], transform=pipeline(), index=index)
    with pytest.raises(ShardError, match="exited"):  # reading it for a batch
        list(ds.iter_batches(4, num_workers=2))


def test_crashing_reader_ends_iteration_with_its_traceback(tmp_path, monkeypatch):
    import fastdata.loading.batches

    urls, _ = write_image_shards(str(tmp_path), 30, 5)
    load = fastdata.loading.batches.load_shard

    def exploding_load(url):
        if url.endswith("train-000004.tar"):
            raise RuntimeError("reader bug")
        return load(url)

    monkeypatch.setattr(fastdata.loading.batches, "load_shard", exploding_load)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="reader bug") as info:
        list(ShardDataset(urls, transform=pipeline()).iter_batches(4, num_workers=2))
    assert "exploding_load" in "".join(traceback.format_tb(info.value.__traceback__))
    assert time.perf_counter() - start < 30


def test_stalled_shard_times_out_instead_of_hanging(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 10, 5)
    good = str(tmp_path / "train-000000.tar")
    ds = ShardDataset([f"pipe:sleep 4; cat {good}"], transform=pipeline(), index=str(tmp_path / "train.index.json"))
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="timed out"):
        list(ds.iter_batches(4, num_workers=1, timeout=1))
    assert time.perf_counter() - start < 4


def expected_uint8(pixels: dict, key: str) -> torch.Tensor:
    img = pixels[key]
    top, left = (int(round((n - 8) / 2.0)) for n in img.shape[:2])
    return torch.from_numpy(np.ascontiguousarray(img[top : top + 8, left : left + 8])).permute(2, 0, 1)


def test_delivered_uint8_batches_are_never_overwritten(tmp_path):
    urls, pixels = write_image_shards(str(tmp_path), 64, 8)
    ds = ShardDataset(urls, transform=pipeline(None), fields=("__key__",))
    kept = list(ds.iter_batches(4, num_workers=2, prefetch=1))  # ring of 3 buffers, 16 batches
    for images, keys in kept:
        for img, key in zip(images, keys, strict=True):
            assert torch.equal(img, expected_uint8(pixels, key)), key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_async_copies_finish_before_their_pinned_buffer_is_reused(tmp_path):
    urls, pixels = write_image_shards(str(tmp_path), 256, 16, size=40)
    ds = ShardDataset(urls, transform=pipeline(None), fields=("__key__",))
    kept = []
    for images, keys in ds.iter_batches(8, num_workers=2, prefetch=1, device="cuda"):
        torch.cuda._sleep(20_000_000)  # keep the stream busy so copies queue up behind it
        kept.append((images, keys))
    torch.cuda.synchronize()
    for images, keys in kept:
        for img, key in zip(images.cpu(), keys, strict=True):
            assert torch.equal(img, expected_uint8(pixels, key)), key


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_fields_only_batch_that_cannot_be_filled_names_the_shard(tmp_path, monkeypatch):
    """A remote shard, no images: a batch whose every sample fails names its shard."""
    monkeypatch.setenv("FASTDATA_CACHE", str(tmp_path / "cache"))
    from fastdata import ShardWriter

    with ShardWriter(str(tmp_path / "s-%06d.tar"), maxcount=100, index=False) as sink:
        for i in range(4):
            sink.write({"__key__": f"k{i}", "cls": b"not-a-number"})
    url = f"pipe:cat {tmp_path / 's-000000.tar'}"
    ds = ShardDataset(url, fields=("cls",), on_error="skip", index="build")
    with pytest.raises(ShardError, match="no sample of this epoch can be read") as info:
        list(ds.iter_batches(4, num_workers=0))
    assert info.value.url == url and "k0" in str(info.value.__cause__)
