"""Resumable index samplers: torch's samplers, same indices, with a ``state_dict``.

``stateful_index_sampler(loader_index_sampler)`` wraps torch's own ``BatchSampler`` and
``RandomSampler`` (exactly those classes) so that their iterators can save and restore
their position, with the state keys of torchdata's ``StatefulDataLoader`` samplers
(``samples_yielded``, ``sampler_state``, ``sampler_iter_state``; ``generator``,
``yielded``). Any other sampler is left as it is: one with its own ``state_dict`` saves
it; one without is fast-forwarded by the number of samples it yielded.

NOTE [ Resumable torch samplers ]
The iterators yield exactly what torch's would (they run torch's own ``__iter__``), so a
``fastdata.DataLoader`` still gives the batches of ``torch.utils.data.DataLoader`` for the
same seed and generator. ``RandomSampler`` draws its permutation lazily, at the first
index, from its ``generator`` (or, with none, from a generator seeded by one draw of the
global RNG, as torch does); the saved ``generator`` is that generator's state just before
the first draw of the epoch, and ``yielded`` the indices taken since, so a restore sets
the generator back (the user's own generator object, so later epochs continue from it as
in the uninterrupted run), redraws the epoch's permutation and skips ``yielded`` indices.
This is the meaning torchdata gives the same keys, so either loader restores the other's
state for the rest of that epoch. (torchdata's own ``RandomSampler`` draws its
permutation before the workers' base seed and torch's after it, so the two loaders shuffle
differently for the same generator: fastdata keeps torch's order, the drop-in promise.)
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, RandomSampler
from torch.utils.data.dataloader import _InfiniteConstantSampler

__all__ = ["is_stateful", "stateful_index_sampler"]

SAMPLES_YIELDED = "samples_yielded"
SAMPLER_STATE = "sampler_state"
SAMPLER_ITER_STATE = "sampler_iter_state"
GENERATOR = "generator"
YIELDED = "yielded"


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` has both ``state_dict`` and ``load_state_dict`` (torchdata's ``Stateful``)."""
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def stateful_index_sampler(sampler: Any) -> Any:
    """The loader's index sampler, made resumable where it is one of torch's own.

    Args:
        sampler: a loader's ``batch_sampler`` (automatic batching) or ``sampler``.

    Returns:
        A wrapper with the same ``len`` and indices for torch's ``BatchSampler`` and
        ``RandomSampler``; ``sampler`` itself otherwise.
    """
    if type(sampler) is BatchSampler:
        return _ResumableBatchSampler(sampler)
    if type(sampler) is RandomSampler:
        return _ResumableRandomSampler(sampler)
    return sampler


class _ResumableRandomSampler:
    """torch's ``RandomSampler`` whose iterators save and restore their position."""

    def __init__(self, sampler: RandomSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> _RandomIter:
        return _RandomIter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _RandomIter(Iterator[int]):
    """One epoch of a ``RandomSampler`` (NOTE [ Resumable torch samplers ])."""

    def __init__(self, sampler: RandomSampler) -> None:
        self.sampler = sampler
        self.yielded = 0
        self._start: torch.Tensor | None = None  # generator state before the first draw
        self._indices: Iterator[int] | None = None

    def _begin(self, state: torch.Tensor | None = None) -> None:
        generator = self.sampler.generator
        if generator is None:  # torch seeds a fresh generator from the global RNG
            generator = torch.Generator()
            if state is None:
                generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        if state is not None:
            generator.set_state(state)
        self._start = generator.get_state()
        epoch = copy.copy(self.sampler)
        epoch.generator = generator
        self._indices = RandomSampler.__iter__(epoch)

    def __next__(self) -> int:
        if self._indices is None:
            self._begin()
        index = next(self._indices)
        self.yielded += 1
        return index

    def state_dict(self) -> dict:
        if self._indices is None:
            self._begin()
        return {GENERATOR: self._start, YIELDED: self.yielded}

    def load_state_dict(self, state: dict) -> None:
        self._begin(state[GENERATOR])
        for _ in range(state[YIELDED]):
            next(self._indices)
        self.yielded = state[YIELDED]
        if self.yielded >= len(self.sampler):  # torch draws once more at the end of an epoch
            self._indices = iter(list(self._indices))


class _ResumableBatchSampler:
    """torch's ``BatchSampler`` whose iterators save and restore their position."""

    def __init__(self, batch_sampler: BatchSampler) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = stateful_index_sampler(batch_sampler.sampler)

    def __iter__(self) -> _BatchIter:
        return _BatchIter(self.sampler, self.batch_sampler.batch_size, self.batch_sampler.drop_last)

    def __len__(self) -> int:
        return len(self.batch_sampler)


class _BatchIter(Iterator[list]):
    """One epoch of a ``BatchSampler``: the batches torch's ``BatchSampler`` makes."""

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.samples_yielded = 0
        self.indices = iter(sampler)

    def __next__(self) -> list:
        batch = list(itertools.islice(self.indices, self.batch_size))
        self.samples_yielded += len(batch)
        if not batch or (self.drop_last and len(batch) < self.batch_size):
            raise StopIteration
        return batch

    def state_dict(self) -> dict:
        state: dict = {SAMPLES_YIELDED: self.samples_yielded}
        if is_stateful(self.sampler):
            state[SAMPLER_STATE] = self.sampler.state_dict()
        if is_stateful(self.indices):
            state[SAMPLER_ITER_STATE] = self.indices.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.samples_yielded = state[SAMPLES_YIELDED]
        if SAMPLER_STATE in state:
            self.sampler.load_state_dict(state[SAMPLER_STATE])
        self.indices = iter(self.sampler)
        if SAMPLER_ITER_STATE in state:
            self.indices.load_state_dict(state[SAMPLER_ITER_STATE])
        elif not is_stateful(self.sampler) and not isinstance(
            self.sampler, _InfiniteConstantSampler
        ):  # a sampler without state: its epoch is replayed up to where it was
            self.indices = itertools.islice(self.indices, self.samples_yielded, None)
