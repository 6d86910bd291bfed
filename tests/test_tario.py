"""The tar reader against the webdataset library and Python's tarfile, on random shards."""

from __future__ import annotations

import io
import os
import random
import string
import tarfile

import braceexpand
import pytest
import webdataset as wds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdata import ShardError, ShardWriter, iter_samples
from fastdata.shards.tario import split_name
from fastdata.shards.urls import expand_urls


def wds_read(urls: list[str]) -> list[dict]:
    """Reads shards with the webdataset library's own tar pipeline (no decoding)."""
    samples = wds.tariterators.tarfile_samples([{"url": u} for u in urls])
    return [{k: v for k, v in s.items() if k != "__local_path__"} for s in samples]


def random_samples(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        depth = rng.choice(["", "a/", "deep/er/"])
        stem = "".join(rng.choices(string.ascii_letters + "_-", k=rng.choice([3, 12, 120])))
        sample = {"__key__": f"{depth}{stem}{i:05d}"}
        for ext in rng.sample(["jpg", "cls", "seg.png", "json", "npy"], rng.randint(1, 4)):
            size = rng.choice([0, 1, 511, 512, 513, 3000])
            sample[ext] = rng.randbytes(size)
        out.append(sample)
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), maxcount=st.integers(1, 9))
def test_reads_webdataset_written_shards_like_webdataset(tmp_path_factory, seed, maxcount):
    folder = tmp_path_factory.mktemp("wds")
    samples = random_samples(random.Random(seed), 20)
    with wds.ShardWriter(str(folder / "s-%04d.tar"), maxcount=maxcount, verbose=0) as sink:
        for s in samples:
            sink.write(dict(s))
    urls = sorted(str(p) for p in folder.glob("s-*.tar"))
    ours = list(iter_samples(urls))
    assert ours == wds_read(urls)
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in samples]
    assert all(o[k] == s[k] for o, s in zip(ours, samples, strict=True) for k in s if k != "__key__")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), maxcount=st.integers(1, 9))
def test_fastdata_shards_read_with_webdataset(tmp_path_factory, seed, maxcount):
    folder = tmp_path_factory.mktemp("fd")
    samples = random_samples(random.Random(seed), 20)
    with ShardWriter(str(folder / "s-%04d.tar"), maxcount=maxcount) as sink:
        for s in samples:
            sink.write(s)
    urls = [str(folder / info.name) for info in sink.shards]
    theirs = wds_read(urls)
    assert theirs == list(iter_samples(urls))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in samples]
    assert all(t[k] == s[k] for t, s in zip(theirs, samples, strict=True) for k in s if k != "__key__")


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_in_every_tar_format(tmp_path, fmt):
    path = tmp_path / "long.tar"
    names = ["d" * 60 + "/" + "e" * 80 + "/x.jpg", "short.cls", "y" * 90 + ".txt"]
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = i + 1
            tar.addfile(info, io.BytesIO(b"z" * (i + 1)))
    ours = list(iter_samples(str(path)))
    assert ours == wds_read([str(path)])
    assert [s["__key__"] for s in ours] == [split_name(n)[0] for n in names]


def test_key_and_extension_rule_matches_webdataset():
    names = ["a/b.c/d.e.F", "x.JPG", "noext", "dir/.hidden", "k.", "a.b.c.d", "__meta__.x"]
    for name in names:
        key, ext = split_name(name)
        wkey, wext = wds.tariterators.base_plus_ext(name)
        assert key == wkey
        assert ext == (wext.lower() if wext is not None else None)


def test_samples_never_merge_across_shards(tmp_path):
    for i in range(2):
        with ShardWriter(str(tmp_path / f"p{i}-%d.tar")) as sink:
            sink.write({"__key__": "same", f"f{i}": b"x"})
    samples = list(iter_samples([str(tmp_path / "p0-0.tar"), str(tmp_path / "p1-0.tar")]))
    assert [sorted(s) for s in samples] == [["__key__", "__url__", "f0"], ["__key__", "__url__", "f1"]]


def make_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_non_contiguous_sample_names_shard_and_key(tmp_path):
    path = str(tmp_path / "bad.tar")
    make_tar(path, [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.cls", b"3")])
    with pytest.raises(ShardError) as info:
        list(iter_samples(path))
    assert info.value.url == path and info.value.key == "a"
    assert "not contiguous" in str(info.value) and path in str(info.value)


def test_duplicate_extension_is_an_error(tmp_path):
    path = str(tmp_path / "dup.tar")
    make_tar(path, [("a.jpg", b"1"), ("a.JPG", b"2")])
    with pytest.raises(ShardError, match="twice"):
        list(iter_samples(path))


# 2560 ends exactly after the last member, without the end-of-archive marker.
@pytest.mark.parametrize("cut", [100, 512, 700, 1024 + 5, 2560])
def test_truncated_shard_raises_with_url(tmp_path, cut):
    path = tmp_path / "t.tar"
    make_tar(path, [("a.jpg", os.urandom(700)), ("b.jpg", os.urandom(10))])
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ShardError) as info:
        list(iter_samples(str(path)))
    assert str(path) in str(info.value)


def test_corrupt_header_checksum(tmp_path):
    path = tmp_path / "c.tar"
    make_tar(path, [("a.jpg", b"hello"), ("b.jpg", b"world")])
    data = bytearray(path.read_bytes())
    data[1024 + 3] ^= 0x20  # a letter of the second member's name
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum"):
        list(iter_samples(str(path)))


def test_not_a_tar(tmp_path):
    path = tmp_path / "n.tar"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ShardError):
        list(iter_samples(str(path)))


def test_missing_shard_is_a_shard_error(tmp_path):
    with pytest.raises(ShardError, match="cannot open"):
        list(iter_samples(str(tmp_path / "nope.tar")))


def test_pipe_and_file_urls(tmp_path):
    path = tmp_path / "s-0.tar"
    with ShardWriter(str(tmp_path / "s-%d.tar")) as sink:
        sink.write({"__key__": "k", "txt": "hi"})
    direct = list(iter_samples(str(path)))
    piped = list(iter_samples(f"pipe:cat {path}"))
    via_fsspec = list(iter_samples(f"file://{path}"))
    assert [s["txt"] for s in piped] == [s["txt"] for s in direct] == [s["txt"] for s in via_fsspec] == [b"hi"]
    with pytest.raises(ShardError, match="exited"):
        list(iter_samples(f"pipe:cat {tmp_path}/missing.tar"))


@pytest.mark.parametrize(
    "pattern", ["x-{000000..000012}.tar", "a{1..3}b{x,y}", "plain.tar", "{a,b,c}/{0..2}", "s{09..11}"]
)
def test_brace_expansion_matches_braceexpand(pattern):
    assert expand_urls(pattern) == list(braceexpand.braceexpand(pattern))


def test_brace_lists_and_errors():
    assert expand_urls("a{0..1}::b") == ["a0", "a1", "b"]
    assert expand_urls(["x{1..2}", "y"]) == ["x1", "x2", "y"]
    with pytest.raises(ValueError, match="empty range"):
        expand_urls("a{5..1}")
    with pytest.raises(ValueError, match="unbalanced"):
        expand_urls("a{1..2")


def test_only_dunder_names_are_metadata_like_webdataset(tmp_path):
    """``__x__`` members are skipped; a key that merely starts with ``__`` is a sample."""
    path = tmp_path / "meta.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("__meta__", "__index__.json", "__abc.cls", "a/__b__.cls", "k.cls"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    ours = [{k: v for k, v in s.items()} for s in iter_samples(str(path))]
    assert ours == wds_read([str(path)])
    from fastdata.shards.shardmap import load_shard

    smap = load_shard(str(path))
    assert [smap.key(i) for i in range(smap.n)] == [s["__key__"] for s in ours]
