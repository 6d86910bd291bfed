"""fastdata verify reports every problem with its shard and key."""

from __future__ import annotations

import io
import tarfile

from fastdata import ShardWriter
from fastdata.shards.index import write_index
from fastdata.shards.verify import verify


def make_tar(path, members):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def indexed_shards(tmp_path, n=3):
    with ShardWriter(str(tmp_path / "d-%03d.tar"), maxcount=4) as sink:
        for i in range(10):
            sink.write({"__key__": f"k{i:02d}", "txt": f"sample {i}", "cls": i % n})
    index = tmp_path / "d.index.json"
    write_index(str(index), {"num_samples": 10, "shards": [s.to_dict() for s in sink.shards]})
    return index, sink.shards


def test_clean_shards_have_no_problems(tmp_path):
    index, _ = indexed_shards(tmp_path)
    assert verify(str(index)) == ([], 10)
    assert verify(str(tmp_path / "d-{000..002}.tar")) == ([], 10)  # finds the index beside


def test_changed_bytes_and_counts_are_reported(tmp_path):
    index, shards = indexed_shards(tmp_path)
    path = tmp_path / shards[1].name
    data = bytearray(path.read_bytes())
    data[512 + 2] ^= 1  # a byte of the first member's content
    path.write_bytes(bytes(data))
    problems, _ = verify(str(index))
    assert [(p.shard, p.message.split(" ")[0]) for p in problems] == [(str(path), "sha256")]
    (tmp_path / shards[2].name).unlink()
    problems, total = verify(str(index))
    assert any(p.message == "missing" and p.shard.endswith(shards[2].name) for p in problems)
    assert total == 8


def test_format_problems_name_shard_and_key(tmp_path):
    path = str(tmp_path / "bad-000.tar")
    make_tar(path, [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.cls", b"3"), ("c.jpg", b"4"), ("c.jpg", b"5"),
                    ("README", b"x"), ("v1.0/x.jpg", b"6"), ("img.2.jpg", b"7")])
    problems, _ = verify(path)
    found = {(p.key, p.message.split(":")[0].split(" (")[0]) for p in problems}
    assert ("a", "files of this sample are not contiguous") in found
    assert ("c", "extension 'jpg' twice in this sample") in found
    assert (None, "member 'README' has no extension; readers skip it") in found
    assert ("v1.0/x", "member 'v1.0/x.jpg' has a dotted folder name") in found
    assert ("img", "member 'img.2.jpg'") in found
    assert all(p.shard == path for p in problems)


def test_truncated_shard_is_reported_not_raised(tmp_path):
    index, shards = indexed_shards(tmp_path)
    path = tmp_path / shards[0].name
    path.write_bytes(path.read_bytes()[:1500])
    problems, _ = verify(str(index))
    assert any(p.shard == str(path) and "truncated" in p.message for p in problems)


def test_index_names_are_never_commands(tmp_path):
    """A ``pipe:`` name in an index is refused, not run (the shell would create PWNED)."""
    import json
    import subprocess
    import sys

    marker = tmp_path / "PWNED"
    for name in (f"pipe:touch {marker}", f"{{pipe:touch {marker},x}}", "/etc/passwd", "../x.tar"):
        index = tmp_path / "train.index.json"
        index.write_text(json.dumps({"format": "fastdata-index", "version": 1,
                                     "shards": [{"name": name, "count": 1}]}))  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "fastdata.cli", "verify", "train.index.json"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 1 and "not a file name" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not marker.exists()
def test_dotted_keys_that_merge_into_one_sample_are_reported(tmp_path):
    """webdataset's writer accepts keys 'img.v1' and 'img.v2'; its own reader then yields
    one sample 'img' (the reference); verify must report the split, and leave alone
    multi-part fields of one sample ('seg.png' beside 'jpg', 'left.jpg' beside 'cls')."""
    wds = __import__("pytest").importorskip("webdataset")

    with wds.TarWriter(str(tmp_path / "w.tar")) as sink:
        for key in ("img.v1", "img.v2"):
            sink.write({"__key__": key, "jpg": b"\xff\xd8 not decoded", "cls": b"1"})
        sink.write({"__key__": "ok", "jpg": b"x", "seg.png": b"y", "cls": b"2"})
        sink.write({"__key__": "pair", "left.jpg": b"x", "right.jpg": b"y", "cls": b"3"})
    merged = list(wds.WebDataset(str(tmp_path / "w.tar"), shardshuffle=False))
    assert [s["__key__"] for s in merged] == ["img", "ok", "pair"]  # two keys read as one
    problems, count = verify(str(tmp_path / "w.tar"))
    assert count == 3 and len(problems) == 1
    assert problems[0].key == "img" and "'img.v1', 'img.v2'" in problems[0].message
