"""Shard tables (``fastdata.shards.shardmap``) against the streaming tar reader, and kept between epochs."""

from __future__ import annotations

import os

import numpy as np

from fastdata.shards import shardmap
from fastdata.shards.shardmap import load_shard
from fastdata.shards.tario import iter_samples
from fastdata.shards.writer import ShardWriter


def write(path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    samples = []
    with ShardWriter(str(path), maxcount=n) as sink:
        for i in range(n):
            s = {
                "__key__": f"s{seed}-{i:03d}",
                "npy": rng.integers(0, 256, (3, 4, 5), dtype=np.uint8),
                "cls": int(rng.integers(100)),
            }
            if i % 3:
                s["txt"] = "x" * int(rng.integers(0, 700))
            sink.write(s)
            samples.append(s)
    return samples


def table(smap) -> list[dict]:
    return [
        {"__key__": smap.key(i), **{ext: bytes(smap.view(ext, i)) for ext in smap.fields if smap.view(ext, i) is not None}}
        for i in range(smap.n)
    ]  # fmt: skip


def reference(url: str) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "__url__"} for s in iter_samples([url])]


def test_table_matches_the_tar_reader(tmp_path):
    write(tmp_path / "a-%03d.tar", 17, seed=1)
    url = str(tmp_path / "a-000.tar")
    smap = load_shard(url)
    assert smap.error is None and smap.n == 17
    assert table(smap) == reference(url)


def test_a_second_load_reuses_the_scan_and_a_rewritten_shard_is_scanned_again(
    tmp_path, monkeypatch
):
    write(tmp_path / "a-%03d.tar", 9, seed=2)
    url = str(tmp_path / "a-000.tar")
    first = load_shard(url)
    before = table(first)  # bytes, not views of the mapped file
    scans, real = [], shardmap._scan_shard
    monkeypatch.setattr(shardmap, "_scan_shard", lambda u, d: scans.append(u) or real(u, d))
    again = load_shard(url)
    assert scans == [] and table(again) == table(first)
    assert again.data is not first.data  # the file is mapped again, only the table is kept

    # rewritten in place: the same size, another pixel value, a later modification time
    offsets, sizes = first.fields["npy"]
    at = int(offsets[4] + sizes[4] - 1)
    stat = os.stat(url)
    with open(url, "r+b") as f:
        f.seek(at)
        f.write(bytes([(int(first.data[at]) + 1) % 256]))
    os.utime(url, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    fresh = load_shard(url)
    assert scans == [url]
    assert table(fresh) == reference(url) != before


def test_a_truncated_shard_keeps_its_error_when_loaded_again(tmp_path):
    write(tmp_path / "a-%03d.tar", 8, seed=4)
    path = tmp_path / "a-000.tar"
    path.write_bytes(path.read_bytes()[:5000])
    first, again = load_shard(str(path)), load_shard(str(path))
    assert first.error is not None and again.error is not None
    assert first.n == again.n and table(first) == table(again)
    assert str(path) in str(again.error)


def test_the_table_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(shardmap, "_SCANS", shardmap._ScanCache(limit=1))
    for i in range(3):
        write(tmp_path / f"c{i}-%03d.tar", 5, seed=10 + i)
        load_shard(str(tmp_path / f"c{i}-000.tar"))
    assert len(shardmap._SCANS.tables) == 1  # only the latest is kept
