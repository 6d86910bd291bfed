"""ShardWriter: splitting, encoding, atomic completion and determinism."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from fastdata import ShardWriter, iter_samples
from fastdata.shards.writer import check_key, encode_value


def test_maxcount_splits_and_counts(tmp_path):
    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxcount=4) as sink:
        for i in range(10):
            sink.write({"__key__": f"k{i}", "cls": i})
    assert [s.count for s in sink.shards] == [4, 4, 2]
    assert [s.name for s in sink.shards] == ["s-000.tar", "s-001.tar", "s-002.tar"]
    for info in sink.shards:
        assert os.path.getsize(tmp_path / info.name) == info.bytes
    labels = [int(s["cls"]) for s in iter_samples(str(tmp_path / "s-{000..002}.tar"))]
    assert labels == list(range(10))


def test_maxsize_closes_a_shard_once_reached(tmp_path):
    with ShardWriter(str(tmp_path / "s-%03d.tar"), maxsize=5000) as sink:
        for i in range(6):
            sink.write({"__key__": f"k{i}", "bin": os.urandom(2000)})
    assert all(s.bytes < 5000 + 2 * 2560 for s in sink.shards)
    assert sum(s.count for s in sink.shards) == 6 and len(sink.shards) >= 2


def test_values_are_encoded_by_type(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    with ShardWriter(str(tmp_path / "s-%d.tar")) as sink:
        sink.write({"__key__": "a", "cls": 7, "txt": "héllo", "npy": arr, "json": {"x": [1, 2]}, "bin": b"\x00"})
    (sample,) = iter_samples(str(tmp_path / "s-0.tar"))
    assert sample["cls"] == b"7" and sample["txt"] == "héllo".encode()
    assert np.array_equal(np.load(io.BytesIO(sample["npy"])), arr)
    assert json.loads(sample["json"]) == {"x": [1, 2]} and sample["bin"] == b"\x00"


def test_bad_values_and_keys_are_named():
    with pytest.raises(TypeError, match="'k'.*'obj'"):
        encode_value("k", "obj", object())
    with pytest.raises(ValueError, match="no dot"):
        check_key("dir/a.b")
    with pytest.raises(ValueError, match="non-empty"):
        check_key("")
    assert check_key("some.dir/name") == "some.dir/name"


def test_incomplete_shard_never_looks_complete(tmp_path):
    sink = ShardWriter(str(tmp_path / "s-%d.tar"), maxcount=2)
    for i in range(3):
        sink.write({"__key__": f"k{i}", "txt": "x"})
    names = sorted(os.listdir(tmp_path))
    assert names == ["s-0.tar", "s-1.tar.tmp"]  # the second shard is still being written
    with pytest.raises(RuntimeError):
        with sink:
            raise RuntimeError("conversion killed")
    assert sorted(os.listdir(tmp_path)) == ["s-0.tar"]


def test_same_samples_give_identical_bytes(tmp_path):
    digests = []
    for run in range(2):
        with ShardWriter(str(tmp_path / f"r{run}-%d.tar")) as sink:
            for i in range(5):
                sink.write({"__key__": f"k{i}", "txt": f"t{i}", "cls": i})
        digests.append([s.sha256 for s in sink.shards])
    assert digests[0] == digests[1]
    assert (tmp_path / "r0-0.tar").read_bytes() == (tmp_path / "r1-0.tar").read_bytes()


def test_pattern_needs_a_number(tmp_path):
    with pytest.raises(ValueError, match="number field"):
        ShardWriter(str(tmp_path / "out.tar"))


def test_temporary_files_never_follow_links(tmp_path):
    """Symlinks planted at the temporary names are replaced, their targets never written."""
    from fastdata.cli import main as cli_main
    from fastdata.shards.writer import ShardWriter as Writer

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("train-000000.tar.tmp", "train.index.json.tmp"):
        os.symlink(victim, out / name)
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    os.symlink(victim_dir, out / "train.index.json.parts")  # where the conversion keeps its parts
    with Writer(str(out / "x-%06d.tar"), maxcount=2) as sink:
        os.symlink(victim, out / "x-000001.tar.tmp")
        for i in range(3):
            sink.write({"__key__": f"k{i}", "cls": i})
    assert victim.read_text() == "keep me"
    photos = tmp_path / "photos" / "a"
    photos.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(photos / f"{i}.png")
    assert cli_main(["convert", str(tmp_path / "photos"), str(out / "train-%06d.tar"), "--maxcount", "1",
                     "--no-progress"]) == 0  # fmt: skip
    assert victim.read_text() == "keep me"
    assert not [p.name for p in out.iterdir() if p.is_symlink()] and not os.listdir(victim_dir)
def test_writer_writes_the_index_that_readers_and_verify_use(tmp_path):
    """ShardWriter leaves an index beside the shards (as ``fastdata convert`` does): counts,
    sizes and SHA-256 of the files on disk, the sample count and the class counts."""
    import hashlib

    from fastdata.shards.index import read_index
    from fastdata.shards.verify import verify

    with ShardWriter(str(tmp_path / "train-%06d.tar"), maxcount=4) as sink:
        for i in range(10):
            sink.write({"__key__": f"k{i:02d}", "txt": f"sample {i}", "cls": i % 3})
    index = read_index(str(tmp_path / "train.index.json"))
    assert index["num_samples"] == 10 and index["stats"]["class_counts"] == {"0": 4, "1": 3, "2": 3}
    for shard in index["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
    assert [s["count"] for s in index["shards"]] == [4, 4, 2]
    assert verify(str(tmp_path / "train.index.json")) == ([], 10)
    with ShardWriter(str(tmp_path / "other-%06d.tar"), index=False) as sink:
        sink.write({"__key__": "a", "txt": "x"})
    assert not (tmp_path / "other.index.json").exists()
