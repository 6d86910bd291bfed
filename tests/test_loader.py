"""fastdata.DataLoader without compile: side by side with torch.utils.data.DataLoader."""

from __future__ import annotations

import inspect
import os
import time

import pytest
import torch
import torch.utils.data as tud
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdata.loading.dataloader as fl
from fastdata.loading.dataloader import DataLoader


class Squares(tud.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([i, i * i]), i


class WorkerEcho(tud.Dataset):
    """Returns what a worker sees: its info, its seeds, a random draw, its pid."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        info = tud.get_worker_info()
        wid = -1 if info is None else info.id
        nw = -1 if info is None else info.num_workers
        seed = -1 if info is None else info.seed
        return {
            "i": i,
            "wid": wid,
            "nw": nw,
            "seed": seed,
            "rand": torch.rand(()),
            "pid": os.getpid(),
            "initial": torch.initial_seed(),
        }


class Stream(tud.IterableDataset):
    """Splits range(n) across workers with get_worker_info, as torch's docs show."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        info = fl.get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(range(start, self.n, step))


class Failing(tud.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        if i == 5:
            raise KeyError(f"bad item {i}")
        return i


class Slow(tud.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        time.sleep(3)
        return i


def both(dataset, **kwargs):
    """Runs torch's and fastdata's loaders with identical arguments and fresh generators."""
    out = []
    for cls in (tud.DataLoader, DataLoader):
        kw = dict(kwargs)
        if "seed" in kw:
            kw["generator"] = torch.Generator().manual_seed(kw.pop("seed"))
        out.append(list(cls(dataset, **kw)))
    return out


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_is_a_torch_dataloader_with_the_same_signature():
    import fastdata

    assert fastdata.DataLoader is DataLoader and fastdata.get_worker_info is tud.get_worker_info
    dl = DataLoader(Squares(4))
    assert isinstance(dl, tud.DataLoader)
    ours = inspect.signature(DataLoader.__init__).parameters
    for name, p in inspect.signature(tud.DataLoader.__init__).parameters.items():
        assert name in ours, name
        assert ours[name].default == p.default and ours[name].kind == p.kind, name
    extra = set(ours) - set(inspect.signature(tud.DataLoader.__init__).parameters)
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extra)


def test_positional_arguments_mean_the_same():
    args = (Squares(10), 3, True, None, None, 0, None, False, True)
    a = list(tud.DataLoader(*args, generator=torch.Generator().manual_seed(1)))
    b = list(DataLoader(*args, generator=torch.Generator().manual_seed(1)))
    assert_same(a, b)
    assert len(a) == 3


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 40),
    bs=st.integers(1, 9),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_same_batches_as_torch_single_process(n, bs, shuffle, drop_last, seed):
    a, b = both(Squares(n), batch_size=bs, shuffle=shuffle, drop_last=drop_last, seed=seed)
    assert_same(a, b)
    assert len(DataLoader(Squares(n), batch_size=bs, drop_last=drop_last)) == len(a)


def test_same_batches_as_torch_global_rng_when_no_generator():
    torch.manual_seed(5)
    a = list(tud.DataLoader(Squares(20), batch_size=4, shuffle=True))
    torch.manual_seed(5)
    b = list(DataLoader(Squares(20), batch_size=4, shuffle=True))
    assert_same(a, b)


def test_shuffle_really_reorders_and_changes_per_epoch():
    dl = DataLoader(
        Squares(50), batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    first = next(iter(dl))[1].tolist()
    second = next(iter(dl))[1].tolist()
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert first != list(range(50)) and first != second


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_size=None),
        dict(batch_size=4, sampler=tud.SequentialSampler(range(10))),
        dict(
            batch_sampler=tud.BatchSampler(
                tud.RandomSampler(range(10), generator=torch.Generator().manual_seed(3)), 3, False
            )
        ),
        dict(batch_size=3, collate_fn=lambda batch: [x[1] * 2 for x in batch]),
        dict(
            batch_size=4,
            sampler=tud.WeightedRandomSampler(
                [1.0] * 10, 15, generator=torch.Generator().manual_seed(2)
            ),
        ),
    ],
    ids=["no-batching", "sampler", "batch_sampler", "collate_fn", "weighted"],
)
def test_same_batches_as_torch_with_samplers_and_collate(kwargs):
    a = list(tud.DataLoader(Squares(10), **kwargs))
    for v in kwargs.values():  # reset the samplers' generators for the second run
        gen = getattr(v, "generator", None) or getattr(
            getattr(v, "sampler", None), "generator", None
        )
        if gen is not None:
            gen.manual_seed(3 if "batch_sampler" in kwargs else 2)
    b = list(DataLoader(Squares(10), **kwargs))
    assert_same(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_workers=-1),
        dict(timeout=-1),
        dict(prefetch_factor=2),
        dict(num_workers=1, prefetch_factor=-1),
        dict(persistent_workers=True),
        dict(shuffle=True, sampler=tud.SequentialSampler(range(4))),
        dict(batch_sampler=tud.BatchSampler(range(4), 2, False), batch_size=2),
        dict(batch_sampler=tud.BatchSampler(range(4), 2, False), drop_last=True),
        dict(batch_size=None, drop_last=True),
        dict(multiprocessing_context="spawn"),
        dict(num_workers=1, multiprocessing_context="no-such-method"),
        dict(num_workers=1, multiprocessing_context=42),
    ],
)
def test_same_validation_errors_as_torch(kwargs):
    with pytest.raises(Exception) as theirs:
        tud.DataLoader(Squares(4), **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        DataLoader(Squares(4), **kwargs)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    "kwargs", [dict(shuffle=True), dict(sampler=[0, 1]), dict(batch_sampler=[[0]])]
)
def test_same_validation_errors_for_iterable_datasets(kwargs):
    with pytest.raises(ValueError) as theirs:
        tud.DataLoader(Stream(4), **kwargs)
    with pytest.raises(ValueError) as ours:
        DataLoader(Stream(4), **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_attributes_are_frozen_after_init_like_torch():
    dl = DataLoader(Squares(4))
    for attr in (
        "batch_size",
        "sampler",
        "dataset",
        "drop_last",
        "batch_sampler",
        "persistent_workers",
    ):
        with pytest.raises(
            ValueError, match=f"{attr} attribute should not be set after DataLoader"
        ):
            setattr(dl, attr, None)


def test_new_arguments_are_validated():
    with pytest.raises(ValueError, match="on_error"):
        DataLoader(Squares(4), on_error="ignore")
    with pytest.raises(ValueError, match="memory_format"):
        DataLoader(Squares(4), memory_format=torch.preserve_format)


def test_workers_see_the_same_info_and_seeds_as_torch():
    a, b = both(WorkerEcho(), batch_size=2, num_workers=2, seed=11)
    for x in (a, b):
        for batch in x:
            del batch["pid"]
    assert_same(a, b)
    assert {int(w) for batch in a for w in batch["wid"]} == {0, 1}
    assert {int(w) for batch in a for w in batch["nw"]} == {2}


def test_iterable_dataset_with_workers_and_len():
    a, b = both(Stream(11), batch_size=2, num_workers=2)
    assert_same(a, b)
    assert sorted(int(v) for batch in b for v in batch) == list(range(11))
    assert (
        len(DataLoader(Stream(11), batch_size=2))
        == len(tud.DataLoader(Stream(11), batch_size=2))
        == 6
    )
    assert len(DataLoader(Stream(11), batch_size=2, drop_last=True)) == 5


def test_in_order_false_yields_the_same_samples():
    a, b = both(Squares(20), batch_size=3, num_workers=2, in_order=False)
    assert sorted(int(v) for batch in b for v in batch[1]) == list(range(20))
    assert sorted(map(str, a)) == sorted(map(str, b))


def without_worker_loop_frame(message: str) -> str:
    """``message`` without the worker loop's own frame: the resumable drop-in's workers run
    torchdata's fork of torch's worker loop (NOTE [ Resuming ]), a file of another name."""
    lines = message.splitlines()
    keep = [i for i, line in enumerate(lines) if "in _worker_loop" not in line]
    drop = {i + 1 for i, line in enumerate(lines) if "in _worker_loop" in line}
    return "\n".join(lines[i] for i in keep if i not in drop)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_exception_is_reraised_with_its_traceback(num_workers):
    messages = []
    for cls in (tud.DataLoader, DataLoader):
        with pytest.raises(KeyError) as info:
            list(cls(Failing(), batch_size=2, num_workers=num_workers))
        messages.append(without_worker_loop_frame(str(info.value)))
    assert messages[0] == messages[1]
    assert "bad item 5" in messages[1]
    if num_workers:
        assert "Caught KeyError in DataLoader worker process" in messages[1]
        assert "Traceback" in messages[1] and "__getitem__" in messages[1]


def test_timeout_raises_like_torch():
    with pytest.raises(RuntimeError, match="DataLoader timed out after 0.5 seconds"):
        next(iter(DataLoader(Slow(), num_workers=1, timeout=0.5)))


def test_persistent_workers_are_reused_across_epochs():
    dl = DataLoader(WorkerEcho(), batch_size=4, num_workers=2, persistent_workers=True)
    pids = [{int(p) for batch in dl for p in batch["pid"]} for _ in range(2)]
    assert pids[0] == pids[1] and os.getpid() not in pids[0]
    fresh = DataLoader(WorkerEcho(), batch_size=4, num_workers=2)
    assert {int(p) for batch in fresh for p in batch["pid"]}.isdisjoint(pids[0])


def test_device_argument_moves_batches():
    batch = next(iter(DataLoader(Squares(4), batch_size=2, device="cpu")))
    assert all(t.device.type == "cpu" for t in batch)


def test_compile_on_a_generic_dataset_warns_and_falls_back():
    with pytest.warns(UserWarning, match="(?s)could not compile.*- dataset Squares"):
        dl = DataLoader(
            Squares(9),
            batch_size=4,
            shuffle=True,
            compile=True,
            generator=torch.Generator().manual_seed(4),
        )
    expected = list(
        tud.DataLoader(
            Squares(9), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(4)
        )
    )
    assert_same(list(dl), expected)
    assert dl.compiled is None
