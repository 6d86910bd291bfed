"""Exact resumption: a state taken at any batch continues with the very batches (and augmentations)
an uninterrupted run yields, in this process and in a new one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from shard_fixtures import digest, write_image_shards

from fastdata import transforms as T
from fastdata.loading.shard_dataset import ShardDataset

EPOCHS = 3
BATCH = 4


def make(urls: str, index: bool = True, **kw) -> ShardDataset:
    pipeline = T.Compose([T.RandomResizedCrop(6, scale=(0.3, 1.0)), T.RandomHorizontalFlip(),
                          T.ToDtype(torch.float32, scale=True)])  # fmt: skip
    args = dict(transform=pipeline, fields=("__key__", "cls"), shuffle=True, buffer_size=9, seed=11)
    args.update(kw)
    if not index:
        args["index"] = None
    return ShardDataset(urls, **args)


def run_to_end(ds: ShardDataset, workers: int, with_states: bool = False) -> tuple[list[str], list[dict]]:
    """Batches until ``EPOCHS`` epochs are complete: digests, and the state after each batch."""
    digests, states = [], []
    while ds.state_dict()["epoch"] < EPOCHS:
        for batch in ds.iter_batches(BATCH, num_workers=workers):
            digests.append(digest(batch))
            if with_states:
                states.append(json.loads(json.dumps(ds.state_dict())))
    return digests, states


def points(n: int, rng: np.random.Generator, epoch_len: int) -> list[int]:
    """Random batch positions plus the edges: first batch, end of epoch 0, start of epoch 1, end."""
    edges = {0, epoch_len - 1, epoch_len, n - 1}
    return sorted(edges | set(rng.choice(n, size=min(n, 10), replace=False).tolist()))


@pytest.mark.parametrize(
    "workers,per_shard,index,kw",
    [(2, 6, True, {}), (0, 6, True, {}), (3, 20, False, {}), (2, 5, True, {"rank": 1, "world_size": 2}),
     (2, 6, True, {"drop_last": True}), (1, 7, True, {"shuffle": False})],
)  # fmt: skip
def test_resume_at_random_points_in_process(tmp_path, workers, per_shard, index, kw):
    urls, _ = write_image_shards(str(tmp_path), 47, per_shard, index=index)
    full, states = run_to_end(make(urls, index, **kw), workers, with_states=True)
    epoch_len = len(full) // EPOCHS
    assert len(full) == EPOCHS * epoch_len and len(set(full)) == len(full)  # epochs differ
    for i in points(len(full), np.random.default_rng(workers + per_shard), epoch_len):
        ds = make(urls, index, **kw)
        ds.load_state_dict(json.loads(json.dumps(states[i])))
        rest, _ = run_to_end(ds, workers)
        assert rest == full[i + 1 :], f"resumed after batch {i}"


def test_state_is_small_and_named(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 40, 5)
    ds = make(urls, buffer_size=100)
    it = ds.iter_batches(BATCH, num_workers=2)
    next(it)
    state = ds.state_dict()
    # the epoch is a pure function of the seed: its position is the split and a batch count
    assert set(state) == {"version", "epoch", "intervals", "world_size", "batch_size", "batches", "samples",
                          "seed", "shuffle", "buffer_size", "drop_last", "shards"}  # fmt: skip
    assert state["batches"] == 1 and state["samples"] == BATCH
    assert len(json.dumps(state)) < 300
    it.close()


def test_another_number_of_workers_resumes_with_the_same_batches(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 20, 5)
    ds = make(urls)
    full = [digest(b) for b in ds.iter_batches(BATCH, num_workers=2)]
    ds = make(urls)
    it = ds.iter_batches(BATCH, num_workers=2)
    next(it), next(it)
    state = ds.state_dict()
    it.close()
    with pytest.raises(ValueError, match="seed"):
        make(urls, seed=12).load_state_dict(state)
    for workers in (0, 1, 3):
        other = make(urls)
        other.load_state_dict(state)
        assert [digest(b) for b in other.iter_batches(BATCH, num_workers=workers)] == full[2:]


@pytest.mark.parametrize("index", [True, False])
def test_state_of_another_order_is_refused(tmp_path, index):
    """A resume must not silently deliver other data: whatever fixes the order is checked."""
    urls, _ = write_image_shards(str(tmp_path), 20, 5)
    ds = make(urls, index=index)
    next(ds.iter_batches(BATCH, num_workers=2))
    state = ds.state_dict()
    fewer = re.sub(r"\.\.(\d+)\}", lambda m: f"..{int(m.group(1)) - 1:06d}}}", urls)
    assert fewer != urls
    for kw, needle in [({"shuffle": False}, "shuffle"), ({"buffer_size": 5}, "buffer_size"),
                       ({"drop_last": True}, "drop_last")]:  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            make(urls, index=index, **kw).load_state_dict(state)
    with pytest.raises(ValueError, match="shard list"):
        make(fewer, index=index).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        make(urls, index=index).load_state_dict({**state, "version": 1})


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from test_shard_resume import make, run_to_end
states = json.load(open({states!r}))
out = []
for state in states:
    ds = make({urls!r})
    ds.load_state_dict(state)
    out.append(run_to_end(ds, 2)[0])
json.dump(out, open({out!r}, "w"))
"""


def test_resume_in_a_new_process(tmp_path):
    urls, _ = write_image_shards(str(tmp_path), 47, 6)
    full, states = run_to_end(make(urls), 2, with_states=True)
    epoch_len = len(full) // EPOCHS
    picks = [epoch_len // 2, epoch_len - 1, epoch_len, 2 * epoch_len + 3]  # mid, end, next epoch, later
    (tmp_path / "states.json").write_text(json.dumps([states[i] for i in picks]))
    code = CHILD.format(tests=os.path.dirname(__file__), states=str(tmp_path / "states.json"),
                        urls=urls, out=str(tmp_path / "out.json"))  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=240)
    for i, rest in zip(picks, json.loads((tmp_path / "out.json").read_text()), strict=True):
        assert rest == full[i + 1 :], f"resumed after batch {i}"
