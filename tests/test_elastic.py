"""Resumption at random points over several epochs, on the same and on other cluster shapes.

Ranks run in lock step in this process (``rank``/``world_size`` given to the datasets), as
the batches of a DDP job do; ``tests/test_ddp.py`` runs real gloo ranks in new processes.
The checks: across ranks, every epoch delivers each sample once (set equality, before
and after the resume together), each sample with the augmentation it has in the
uninterrupted run, and on an unchanged topology the very same batches.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from shard_fixtures import write_image_shards

import fastdata
from fastdata import transforms as T

EPOCHS = 3
BATCH = 4


def pipeline():
    return T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three small datasets of uneven shards (the third with PNG images)."""
    out = []
    for i, (n, per) in enumerate([(43, 6), (29, 5), (35, 9)]):
        folder = tmp_path_factory.mktemp(f"d{i}")
        pattern, pixels = write_image_shards(str(folder), n, per, seed=i, raw=i < 2)
        out.append((pattern, {f"{i}:{k}" for k in pixels}))
    return out


def single(shards, rank, world, **kw):
    pattern, _ = shards[0]
    return fastdata.ShardDataset(pattern, pipeline(), fields=("__key__",), shuffle=True, buffer_size=10, seed=5,
                                 rank=rank, world_size=world, **kw)  # fmt: skip


def mixed(shards, rank, world, **kw):
    sources = [fastdata.ShardDataset(p, pipeline(), fields=("__key__", "__url__"), shuffle=True, buffer_size=8,
                                     seed=i) for i, (p, _) in enumerate(shards)]  # fmt: skip
    return fastdata.Mix(sources, [0.5, 0.2, 0.3], stop="all_exhausted", rank=rank, world_size=world, **kw)


def ident(batch) -> list[str]:
    """The samples of a batch, named so that the three datasets' keys differ."""
    if len(batch) == 3:  # a mix: images, keys, urls
        return [f"{os.path.basename(os.path.dirname(u))[1]}:{k}" for k, u in zip(batch[1], batch[2], strict=True)]
    return [f"0:{k}" for k in batch[1]]


def digests(batch) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in batch[0]]


class Job:
    """``world`` ranks in lock step, each with its ``fastdata.DataLoader``."""

    def __init__(self, make, shards, world: int, workers, **loader_kw) -> None:
        workers = workers if isinstance(workers, list) else [workers] * world
        self.loaders = [fastdata.DataLoader(make(shards, r, world), batch_size=BATCH, num_workers=workers[r],
                                            **loader_kw) for r in range(world)]  # fmt: skip

    def load(self, state: dict) -> None:
        for loader in self.loaders:  # rank 0's state, on every rank
            loader.load_state_dict(json.loads(json.dumps(state)))

    def run(self, until_epoch: int, stop_after: int | None = None):
        """Batches per epoch as ``[(ids, digests) per step]``; stops after ``stop_after``
        steps (returning rank 0's state then) or once ``until_epoch`` epochs are done."""
        epochs, steps, state = [], 0, None
        while self.loaders[0].dataset.state_dict()["epoch"] < until_epoch:
            epoch = self.loaders[0].dataset.state_dict()["epoch"]
            iters = [iter(loader) for loader in self.loaders]
            record = []
            while True:
                got = [next(it, None) for it in iters]
                if all(g is None for g in got):
                    break
                assert all(g is not None for g in got), "ranks ran different numbers of batches"
                record.append(([ident(g) for g in got], [digests(g) for g in got]))
                steps += 1
                if steps == stop_after:
                    state = self.loaders[0].state_dict()
                    epochs.append((epoch, record))
                    return epochs, state
            epochs.append((epoch, record))
        return epochs, state


def pairs(steps) -> collections.Counter:
    """(sample, augmentation digest) of every sample of these steps, with multiplicity."""
    return collections.Counter(
        (i, d) for step in steps for r_ids, r_dig in zip(*step, strict=True) for i, d in zip(r_ids, r_dig, strict=True)
    )


def check_epoch(full_record, before, after, universe):
    """One epoch resumed: the samples before and after the resume are the uninterrupted
    epoch's, each as often and with the same augmentation (no loss, no duplicate)."""
    assert pairs(before) + pairs(after) == pairs(full_record)
    assert {i for i, _ in pairs(after)} <= universe


SCENARIOS = {
    "1 rank": (single, 1, 2, 1, 2),
    "2 ranks -> 2": (single, 2, 2, 2, 2),
    "2 ranks -> 1": (single, 2, 1, 2, 1),
    "1 rank -> 2": (single, 1, 2, 2, 0),
    "2 ranks -> 3": (single, 2, 2, 3, 1),
    "2 workers -> 1": (single, 1, 2, 1, 1),
    "2 workers -> 3": (single, 1, 2, 1, 3),
    "mix of three, 2 ranks -> 3": (mixed, 2, 2, 3, 2),
    "mix of three, same": (mixed, 1, 2, 1, 2),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resume_at_random_points(shards, name):
    make, world, workers, world2, workers2 = SCENARIOS[name]
    universe = shards[0][1] if make is single else set().union(*(u for _, u in shards))
    full, _ = Job(make, shards, world, workers).run(EPOCHS)
    assert len(full) == EPOCHS
    for _, record in full:
        ids = [i for step in record for rank in step[0] for i in rank]
        if make is single:
            assert sorted(ids) == sorted(universe)  # every epoch: each sample once
        else:  # all_exhausted: every sample at least once, the shorter sources cycling
            assert set(ids) == universe
    steps = [len(r) for _, r in full]
    total = sum(steps)
    rng = np.random.default_rng(len(name))
    edges = {1, steps[0] - 1, steps[0], total - 1}
    points = sorted(edges | set(rng.choice(np.arange(1, total), min(30, total - 1), replace=False).tolist()))
    assert len(points) >= min(30, total - 1)
    for k in points:
        before, state = Job(make, shards, world, workers).run(EPOCHS, stop_after=k)
        job = Job(make, shards, world2, workers2)
        job.load(state)
        after, _ = job.run(EPOCHS)
        done = dict(before)
        for epoch, record in after:
            check_epoch(full[epoch][1], done.get(epoch, []), record, universe)
            if world2 == world:  # an unchanged topology: the very same batches
                assert [s[0] for s in record] == [s[0] for s in full[epoch][1]][len(done.get(epoch, [])):]
        assert {e for e, _ in after} | {e for e, r in before if len(r) == steps[e]} == set(range(EPOCHS))


def test_a_second_save_and_resume_in_the_same_epoch(shards):
    full, _ = Job(single, shards, 2, 2).run(1)
    first, state = Job(single, shards, 2, 2).run(1, stop_after=2)
    job = Job(single, shards, 3, 1)  # resumed on 3 ranks ...
    job.load(state)
    second, state2 = job.run(1, stop_after=2)
    job = Job(single, shards, 1, 2)  # ... saved again, resumed on 1
    job.load(state2)
    third, _ = job.run(1)
    check_epoch(full[0][1], first[0][1] + second[0][1], third[0][1], shards[0][1])


def test_load_state_dict_before_the_first_iter_and_persistent_workers(shards):
    full, _ = Job(single, shards, 1, 2, persistent_workers=True).run(2)
    _, state = Job(single, shards, 1, 2, persistent_workers=True).run(2, stop_after=3)
    job = Job(single, shards, 1, 2, persistent_workers=True)
    job.load(state)  # before any iter()
    after, _ = job.run(2)
    assert [s[0] for s in after[0][1]] == [s[0] for s in full[0][1]][3:]
    assert [s[0] for s in after[1][1]] == [s[0] for s in full[1][1]]


def test_an_early_break_then_resume(shards):
    loader = fastdata.DataLoader(single(shards, 0, 1), batch_size=BATCH, num_workers=2)
    full = [ident(b) for b in loader]
    loader = fastdata.DataLoader(single(shards, 0, 1), batch_size=BATCH, num_workers=2)
    for i, _ in enumerate(loader):
        if i == 2:
            break  # the iterator is dropped mid-epoch
    state = loader.state_dict()
    again = fastdata.DataLoader(single(shards, 0, 1), batch_size=BATCH, num_workers=1)
    again.load_state_dict(state)
    assert [ident(b) for b in again] == full[3:]


def test_resume_at_the_last_batch_starts_the_next_epoch(shards):
    job = Job(single, shards, 2, 2)
    full, _ = job.run(2)
    n = len(full[0][1])
    before, state = Job(single, shards, 2, 2).run(2, stop_after=n)
    assert state["epoch"] == 1 and state["batches"] == 0
    job = Job(single, shards, 3, 2)
    job.load(state)
    after, _ = job.run(2)
    assert [e for e, _ in after] == [1]
    check_epoch(full[1][1], [], after[0][1], shards[0][1])


def test_skip_with_a_corrupt_sample(tmp_path):
    """A corrupt sample under on_error="skip": counted, replaced, the resume still exact."""
    from fastdata.shards.writer import ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(str(tmp_path / "c-%06d.tar"), maxcount=7) as sink:
        for i in range(30):
            img = rng.integers(0, 256, (10, 12, 3), np.uint8)
            sink.write({"__key__": f"k{i:03d}", "npy": img if i != 11 else b"not an array", "cls": i})

    def make(rank, world):
        return fastdata.ShardDataset(str(tmp_path / "c-{000000..000004}.tar"), pipeline(), fields=("__key__",),
                                     shuffle=True, buffer_size=8, seed=2, on_error="skip", rank=rank,
                                     world_size=world)  # fmt: skip

    full = [ident(b) for r in range(2) for b in fastdata.DataLoader(make(r, 2), batch_size=BATCH)]
    loaders = [fastdata.DataLoader(make(r, 2), batch_size=BATCH) for r in range(2)]
    iters = [iter(x) for x in loaders]
    before = [ident(next(it)) for it in iters for _ in range(2)]
    state = loaders[0].state_dict()
    after = []
    for r in range(3):
        loader = fastdata.DataLoader(make(r, 3), batch_size=BATCH)
        loader.load_state_dict(state)
        after += [ident(b) for b in loader]
        assert loader.dataset.stats.skipped <= 1
    ids = [i for b in before + after for i in b]
    assert collections.Counter(ids) == collections.Counter(i for b in full for i in b)
    assert "0:k011" not in ids and len(ids) == 30  # the corrupt one replaced by another of its batch
