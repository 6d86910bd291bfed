"""Remote shards: fsspec HTTP URLs and ``pipe:`` commands against a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest
import torch
from shard_fixtures import digest, write_image_shards

from fastdata import transforms as T
from fastdata.errors import FastdataError, ShardError
from fastdata.loading.shard_dataset import ShardDataset
from fastdata.shards.index import write_index


@pytest.fixture
def served(tmp_path):
    """``(folder, base URL)`` of a local HTTP server on 127.0.0.1 serving ``tmp_path``."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def pipeline():
    return T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])


def batches(urls, **kw):
    ds = ShardDataset(urls, transform=pipeline(), fields=("__key__", "cls"), shuffle=True, buffer_size=8, seed=3, **kw)
    return [digest(b) for b in ds.iter_batches(4, num_workers=2)]


def test_http_shards_through_fsspec_equal_local_ones(served):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    folder, base = served
    local, _ = write_image_shards(str(folder), 30, 7)
    remote = local.replace(str(folder), base)
    assert remote.startswith("http://127.0.0.1:")
    # one order for every source: remote shards are read whole, the batches are the local ones
    assert batches(remote, index=f"{base}/train.index.json") == batches(local)


def test_http_shards_with_a_remote_index_split_over_ranks(served):
    pytest.importorskip("aiohttp")
    folder, base = served
    local, _ = write_image_shards(str(folder), 30, 7)
    remote = local.replace(str(folder), base)
    index = f"{base}/train.index.json"
    got = [batches(remote, rank=r, world_size=2, index=index) for r in range(2)]
    assert got == [batches(local, rank=r, world_size=2) for r in range(2)]
    assert len(got[0]) == len(got[1]) > 0


def test_remote_shards_without_index_say_how_to_make_one_or_build_it(served, monkeypatch):
    pytest.importorskip("aiohttp")
    folder, base = served
    monkeypatch.setenv("FASTDATA_CACHE", str(folder / "cache"))
    local, _ = write_image_shards(str(folder), 10, 5, index=False)
    remote = local.replace(str(folder), base)
    with pytest.raises(FastdataError, match="fastdata index SHARDS"):
        batches(remote, rank=0, world_size=2)
    assert batches(remote, index="build") == batches(local)  # read once, the index cached
    built = list((folder / "cache" / "indexes").iterdir())
    assert len(built) == 1 and built[0].name.endswith(".index.json")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_pipe_curl_equals_local(served):
    folder, base = served
    local, _ = write_image_shards(str(folder), 30, 7)
    names = [f"train-{i:06d}.tar" for i in range(5)]
    piped = [f"pipe:curl -sf {base}/{n}" for n in names]
    assert batches(piped, index=str(folder / "train.index.json")) == batches(local)


def test_missing_remote_shard_is_a_shard_error_naming_it(served):
    pytest.importorskip("aiohttp")
    folder, base = served
    write_image_shards(str(folder), 10, 5)
    url = f"{base}/nope-000000.tar"
    index = str(folder / "nope.index.json")
    write_index(index, {"shards": [{"name": "nope-000000.tar", "count": 5}]})
    with pytest.raises(ShardError, match="nope-000000.tar"):
        batches([url], index=index)
