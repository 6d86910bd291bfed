"""``fastdata index``: the index of existing shards, against the one ``fastdata convert`` writes."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_remote import served  # noqa: F401 (the HTTP server fixture)

from fastdata.cli import main
from fastdata.errors import FastdataError
from fastdata.loading.shard_dataset import ShardDataset
from fastdata.shards.index import read_index


@pytest.fixture
def converted(tmp_path):
    """Shards written by ``fastdata convert`` from a folder of random images, and their index."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    for c in range(2):
        (tmp_path / "photos" / f"c{c}").mkdir(parents=True)
        for i in range(int(rng.integers(5, 9))):
            pixels = rng.integers(0, 256, (int(rng.integers(8, 20)), 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / f"c{c}" / f"{i}.png")
    pattern = str(tmp_path / "out/train-%06d.tar")
    args = ["convert", str(tmp_path / "photos"), pattern, "--maxcount", "4", "-j", "0", "--no-progress"]
    assert main(args) == 0
    index = read_index(str(tmp_path / "out/train.index.json"))
    return tmp_path / "out", index


def shard_fields(index: dict) -> tuple:
    return index["num_samples"], index["shards"]


def test_index_of_converted_shards_equals_converts(converted, capsys):
    folder, expected = converted
    os.rename(folder / "train.index.json", folder / "convert.json")
    n = len(expected["shards"])
    brace = str(folder / f"train-{{000000..{n - 1:06d}}}.tar")
    assert main(["index", brace, "--no-progress"]) == 0
    assert f"{n} shards" in capsys.readouterr().out
    assert shard_fields(read_index(str(folder / "train.index.json"))) == shard_fields(expected)
    out = folder / "elsewhere.json"  # one path per shard, -o, one thread
    paths = [str(folder / s["name"]) for s in expected["shards"]]
    assert main(["index", *paths, "-o", str(out), "-j", "1", "--no-progress"]) == 0
    assert shard_fields(read_index(str(out))) == shard_fields(expected)


def test_index_of_webdataset_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    counts = []
    for s in range(3):
        counts.append(int(rng.integers(1, 9)))
        with wds.TarWriter(str(tmp_path / f"w-{s}.tar")) as sink:
            for i in range(counts[-1]):
                sink.write({"__key__": f"s{s}_{i:03d}", "bin": rng.bytes(int(rng.integers(1, 3000))),
                            "cls": str(i % 3)})  # fmt: skip
    assert main(["index", str(tmp_path / "w-{0..2}.tar"), "--no-progress"]) == 0
    index = read_index(str(tmp_path / "w.index.json"))
    for s, entry in enumerate(index["shards"]):
        path = tmp_path / f"w-{s}.tar"
        read = sum(1 for _ in wds.WebDataset(str(path), shardshuffle=False))
        assert entry == {"name": path.name, "count": read, "bytes": path.stat().st_size,
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # fmt: skip
    assert index["num_samples"] == sum(counts)


def test_index_of_remote_and_piped_shards(converted, served, capsys):  # noqa: F811
    pytest.importorskip("aiohttp")
    folder, expected = converted
    root, base = served
    shutil.copytree(folder, root / "remote")
    names = [s["name"] for s in expected["shards"]]
    urls = [f"{base}/remote/{n}" for n in names]
    assert main(["index", *urls, "--no-progress"]) == 1  # where to write it?
    assert "-o PATH" in capsys.readouterr().err
    out = str(root / "http.json")
    assert main(["index", *urls, "-o", out, "--no-progress"]) == 0
    assert shard_fields(read_index(out)) == shard_fields(expected)
    if shutil.which("curl"):
        piped = [f"pipe:curl -sf {base}/remote/{n}" for n in names]
        assert main(["index", *piped, "-o", str(root / "pipe.json"), "--no-progress"]) == 0
        assert shard_fields(read_index(str(root / "pipe.json"))) == shard_fields(expected)
    # the remote index gives remote shards their counts on several ranks
    lengths = [len(ShardDataset(urls, index=out, rank=r, world_size=2)) for r in range(2)]
    local = [len(ShardDataset([str(folder / n) for n in names], rank=r, world_size=2)) for r in range(2)]
    assert lengths == local
    with pytest.raises(FastdataError, match="fastdata index"):
        len(ShardDataset(urls, rank=0, world_size=2))


def test_bad_shard_is_one_line_naming_it(converted, capsys):
    folder, expected = converted
    bad = folder / expected["shards"][1]["name"]
    bad.write_bytes(bad.read_bytes()[:700])  # cut inside a member
    assert main(["index", str(folder / "train-*.tar".replace("*", "{000000..000001}")), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastdata index: error:") and str(bad) in err and "\n" not in err
    assert main(["index", str(folder / "missing.tar"), "--no-progress"]) == 1
    assert "missing.tar" in capsys.readouterr().err
