"""DataLoader.state_dict / load_state_dict, side by side with torchdata's StatefulDataLoader.

Each check runs a loader for a few epochs without interruption, then again stopped at a
point (mid-epoch, the last batch, the exact end of an epoch, the next epoch), saved and
resumed in a new loader built from fresh objects (as a restarted job would): the two runs
must yield exactly the same batches, and StatefulDataLoader resumed from the same state
must yield the same rest of the epoch.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.utils.data as tud
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from fastdata.loading.dataloader import DataLoader

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


class Table(tud.Dataset):
    """Rows of fresh random data; a sample is ``(row, index)``."""

    def __init__(self, n: int, seed: int) -> None:
        self.x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i


class CountingTable(Table):
    """A map-style dataset with its own state: each sample carries the number of reads so far."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)
        self.reads = 0

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], i, self.reads

    def state_dict(self) -> dict:
        return {"reads": self.reads}

    def load_state_dict(self, state: dict) -> None:
        self.reads = state["reads"]


class Stream(tud.IterableDataset):
    """An iterable dataset split between workers; ``stateful`` adds random noise and a state."""

    def __init__(self, n: int, seed: int, stateful: bool = False) -> None:
        self.x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        self.seed, self.stateful = seed, stateful

    def __iter__(self):
        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        it = _StreamIter(self.x, worker, workers, self.seed)
        return it if self.stateful else iter(list(it))


class _StreamIter:
    def __init__(self, x, worker: int, workers: int, seed: int) -> None:
        self.x, self.rows = x, list(range(worker, len(x), workers))
        self.pos, self.gen = 0, torch.Generator().manual_seed(seed + worker)

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos == len(self.rows):
            raise StopIteration
        row = self.rows[self.pos]
        self.pos += 1
        return self.x[row] + torch.rand(2, generator=self.gen), row

    def state_dict(self) -> dict:
        return {"pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]
        self.gen.set_state(state["gen"])


def flat(batch) -> list:
    leaves, _ = torch.utils._pytree.tree_flatten(batch)
    return leaves


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b), f"{len(a)} batches, expected {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        fx, fy = flat(x), flat(y)
        assert len(fx) == len(fy), f"batch {i}"
        for u, v in zip(fx, fy, strict=True):
            same = torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
            assert same, f"batch {i} differs: {x} != {y}"


def epochs_of(loader, epochs: int) -> list:
    return [batch for _ in range(epochs) for batch in loader]


def stop_and_save(loader, stop: int, at_end: bool):
    """Runs ``loader`` for ``stop`` batches and returns them with its state then.

    ``at_end``: when ``stop`` is the last batch of an epoch, save after the epoch's loop
    ended (exact end of epoch); otherwise break out of the loop after the batch.
    """
    seen = []
    while True:
        for batch in loader:
            seen.append(batch)
            if len(seen) == stop and not at_end:
                return seen, loader.state_dict()
        if len(seen) >= stop:
            return seen, loader.state_dict()


def rest(loader, count: int, max_epochs: int = 8) -> list:
    """``count`` batches from ``loader``, over as many ``iter()`` calls as it takes."""
    out = []
    for _ in range(max_epochs):
        if len(out) >= count:
            break
        out.extend(loader)
    return out[:count] if len(out) >= count else out


def check_resume(make, epochs: int, points: list, at_end_too: bool = True, sdl=None):
    """Resumes ``make()`` at each of ``points`` and compares with the uninterrupted run.

    Args:
        make: builds a loader from fresh objects (same seeds).
        epochs: length of the run.
        points: batch counts after which to save.
        at_end_too: also save after the loop ends where a point is an epoch's last batch.
        sdl: builds the matching StatefulDataLoader, resumed from the same state.
    """
    full = epochs_of(make(), epochs)
    per_epoch = len(full) // epochs
    for stop in points:
        for at_end in (False, True) if at_end_too and stop % per_epoch == 0 else (False,):
            seen, state = stop_and_save(make(), stop, at_end)
            resumed = make()
            resumed.load_state_dict(state)
            got = rest(resumed, len(full) - stop)
            assert_same(seen + got, full)
            if sdl is not None:  # the rest of this epoch from StatefulDataLoader
                left = (-stop) % per_epoch
                theirs = sdl()
                theirs.load_state_dict(state)
                assert_same(rest(theirs, left, 2), full[stop : stop + left])


def random_points(rng: random.Random, total: int, per_epoch: int, k: int) -> list:
    """``k`` save points: random ones plus the last batch of the first epoch and one into the next."""
    return sorted({per_epoch, per_epoch + 1, *rng.sample(range(1, total), min(k, total - 1))})


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shuffle", [False, True])
def test_map_style_single_process(seed, shuffle):
    rng = random.Random(seed)
    n, bs, drop = rng.randint(7, 23), rng.randint(1, 5), rng.random() < 0.5
    ds = Table(n, seed)

    def make(cls=DataLoader):
        return cls(ds, batch_size=bs, shuffle=shuffle, drop_last=drop,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip

    per_epoch = n // bs if drop else -(-n // bs)
    check_resume(make, 3, random_points(rng, 3 * per_epoch, per_epoch, 6),
                 sdl=lambda: make(StatefulDataLoader))  # fmt: skip
    # without interruption, fastdata gives torch's batches
    torch_run = epochs_of(tud.DataLoader(ds, batch_size=bs, shuffle=shuffle, drop_last=drop,
                                         generator=torch.Generator().manual_seed(seed)), 3)  # fmt: skip
    assert_same(epochs_of(make(), 3), torch_run)


def test_global_rng_shuffle_resumes_the_epoch():
    ds = Table(17, 1)
    torch.manual_seed(11)
    first = DataLoader(ds, batch_size=4, shuffle=True)
    full = list(first)
    torch.manual_seed(11)
    seen, state = stop_and_save(DataLoader(ds, batch_size=4, shuffle=True), 2, False)
    resumed = DataLoader(ds, batch_size=4, shuffle=True)
    resumed.load_state_dict(state)
    assert_same(seen + list(resumed), full)


def test_state_saved_by_stateful_dataloader_loads_here_and_back():
    ds = Table(19, 2)

    def make(cls):
        return cls(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(5))

    theirs = make(StatefulDataLoader)
    full = list(theirs)
    seen, state = stop_and_save(make(StatefulDataLoader), 4, False)
    ours = make(DataLoader)
    ours.load_state_dict(state)
    mid = next(iter(ours))
    assert_same([mid], full[4:5])
    back = make(StatefulDataLoader)
    back.load_state_dict(ours.state_dict())
    assert_same(list(back), full[5:])


def test_second_save_in_same_epoch_and_state_before_first_iter():
    ds = Table(30, 3)

    def make():
        return DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))

    full = epochs_of(make(), 2)
    fresh = make()
    untouched = fresh.state_dict()  # before the first iter()
    assert_same(epochs_of(fresh, 2), full)
    again = make()
    again.load_state_dict(untouched)
    assert_same(epochs_of(again, 2), full)
    seen, state = stop_and_save(make(), 2, False)
    first = make()
    first.load_state_dict(state)
    it = iter(first)
    seen += [next(it), next(it)]
    second = make()
    second.load_state_dict(first.state_dict())  # a second save, same epoch
    assert_same(seen + rest(second, len(full) - 4), full)


def test_dataset_with_its_own_state_and_sampler_with_state():
    ds_seed = 4

    def make(cls=DataLoader):
        ds = CountingTable(13, ds_seed)
        return cls(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(2))

    check_resume(make, 3, [1, 4, 5, 7, 11], sdl=lambda: make(StatefulDataLoader))
    from torchdata.stateful_dataloader.sampler import RandomSampler, StatefulDistributedSampler

    def own_sampler(cls=DataLoader):  # torchdata's sampler: its order, in both loaders
        ds = Table(16, ds_seed)
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(3))
        return cls(ds, batch_size=3, sampler=sampler)

    check_resume(own_sampler, 2, [2, 6, 7], sdl=lambda: own_sampler(StatefulDataLoader))
    plain = Table(16, ds_seed)  # torch's RandomSampler given by the user resumes too

    def torch_sampler():
        sampler = tud.RandomSampler(plain, generator=torch.Generator().manual_seed(2))
        return DataLoader(plain, batch_size=5, sampler=sampler)

    check_resume(torch_sampler, 3, [1, 3, 4, 5, 9])

    def distributed(cls=DataLoader):
        ds = Table(21, 5)
        sampler = StatefulDistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3)
        return cls(ds, batch_size=2, sampler=sampler)

    check_resume(distributed, 1, [1, 3, 5, 6], sdl=lambda: distributed(StatefulDataLoader))


def test_batch_sampler_and_distributed_sampler():
    ds = Table(20, 6)

    def make(cls=DataLoader):
        inner = tud.RandomSampler(ds, generator=torch.Generator().manual_seed(8))
        return cls(ds, batch_sampler=tud.BatchSampler(inner, 3, drop_last=False))

    # (StatefulDataLoader cannot restore torch's own BatchSampler's generator: ours only)
    check_resume(make, 2, [2, 6, 7, 9])

    def distributed(cls=DataLoader):
        sampler = tud.DistributedSampler(ds, num_replicas=3, rank=2, shuffle=True, seed=1)
        return cls(ds, batch_size=2, sampler=sampler)

    check_resume(distributed, 1, [1, 2, 3], sdl=lambda: distributed(StatefulDataLoader))


@pytest.mark.parametrize("stateful", [False, True])
def test_iterable_dataset_single_process(stateful):
    def make(cls=DataLoader):
        return cls(Stream(11, 7, stateful), batch_size=3)

    check_resume(make, 2, [1, 3, 4, 5, 7], sdl=lambda: make(StatefulDataLoader))


def test_workers_map_and_iterable():
    """num_workers=2: map-style with shuffle and a dataset state, a stateful stream."""

    def table(cls=DataLoader):
        return cls(CountingTable(14, 9), batch_size=3, shuffle=True, num_workers=2,
                   generator=torch.Generator().manual_seed(3))  # fmt: skip

    check_resume(table, 2, [3, 5], sdl=lambda: table(StatefulDataLoader))

    def stream(cls=DataLoader):
        return cls(Stream(13, 2, True), batch_size=2, num_workers=2)

    check_resume(stream, 1, [3], at_end_too=False, sdl=lambda: stream(StatefulDataLoader))


def test_persistent_workers_and_early_break():
    def make():
        return DataLoader(Table(15, 10), batch_size=4, shuffle=True, num_workers=2,
                          persistent_workers=True, generator=torch.Generator().manual_seed(6))  # fmt: skip

    full = epochs_of(make(), 3)
    loader = make()
    seen = list(loader)  # epoch 0 on persistent workers
    for batch in loader:  # break out of epoch 1 early
        seen.append(batch)
        break
    state = loader.state_dict()
    next(iter(loader))  # a new iter() starts the next epoch, on the same workers
    loader.load_state_dict(state)  # back to the break, on the same loader
    assert_same(seen + rest(loader, len(full) - 5), full)
    other = make()  # and in a new loader
    other.load_state_dict(state)
    assert_same(seen + rest(other, len(full) - 5), full)


# ---- compile=True ----


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(7):
            h, w = (int(v) for v in rng.integers(20, 40, 2))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i}.png"
            )
    return str(root)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_compiled_path_resumes_with_its_augmentations(folder, num_workers):
    pipeline = v2.Compose(
        [v2.RandomResizedCrop(12), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)]
    )

    def make(**kw):
        ds = datasets.ImageFolder(folder, transform=pipeline)
        dl = DataLoader(ds, batch_size=4, shuffle=True, compile=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(2), **kw)  # fmt: skip
        assert dl.compiled is not None
        return dl

    check_resume(make, 3, [1, 3, 4, 5, 9])
    if num_workers:
        check_resume(lambda: make(persistent_workers=True), 2, [2, 4, 6])
