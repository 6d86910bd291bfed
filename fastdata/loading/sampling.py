"""Which samples each (rank, worker) reads, in which order: pure functions of the seed.

Everything here is a pure function of ``(seed, epoch, rank, worker)`` and of the shard
list, never of a clock, a process id or the environment, so every process of a job can
compute every other process's share, and a resumed run recomputes its own.

NOTE [ Splitting shards over ranks and workers ]
A *slot* is one (rank, worker) pair, numbered ``rank * num_workers + worker``. Every epoch
the shard list is permuted by ``(seed, epoch)`` (the same permutation on every rank) and,
when there are at least as many shards as slots, slot ``s`` reads the permuted shards
``s, s + S, s + 2S, ...`` (``S`` slots in all): every shard is read exactly once per epoch.
With fewer shards than slots that would leave slots idle (and, in DDP, ranks without
data), so instead every slot reads every shard and keeps the samples whose position in the
epoch's stream is ``s`` modulo ``S`` (sample-level striding): still a partition, at the
cost of each slot reading all the bytes.

NOTE [ Equal batches per rank ]
DDP hangs if one rank runs one batch more than another. Each slot cuts its samples into
batches (its last partial batch is kept or dropped by ``drop_last``), a rank's batches
are its slots' batches in turn, and every rank stops after ``min`` over ranks of the
number of batches it could make (the *drop* policy): the surplus of the larger ranks is
dropped this epoch and, as the order changes every epoch, read in other epochs. The counts
come from the shards' index (or from counting local shards), so every rank computes the
same minimum before the first batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Assignment",
    "Draws",
    "assign",
    "rank_batches",
    "shard_order",
    "slot_batches",
    "slot_count",
]

_CHUNK = 4096  # buffer draws generated at once


def shard_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's order of ``n`` shards: a permutation by ``(seed, epoch)``, or ``0..n-1``."""
    if not shuffle:
        return list(range(n))
    key = np.random.SeedSequence([_u64(seed), _u64(epoch), 0x5A4D])
    return np.random.Generator(np.random.Philox(key)).permutation(n).tolist()


@dataclass(frozen=True)
class Assignment:
    """What one slot reads (NOTE [ Splitting shards over ranks and workers ]).

    Attributes:
        shards: indices into the shard list, in reading order.
        stride: keep every ``stride``-th sample of the stream of ``shards`` ...
        phase: ... starting at this one (``stride`` 1, ``phase`` 0: keep all).
    """

    shards: tuple[int, ...]
    stride: int = 1
    phase: int = 0


def assign(order: Sequence[int], *, rank: int, world_size: int, worker: int, num_workers: int) -> Assignment:
    """The shards (and stride) of slot ``(rank, worker)`` for one epoch's ``order``.

    Raises:
        ValueError: ``rank``/``worker`` out of range or no shards at all.
    """
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(
            f"rank {rank} of {world_size} / worker {worker} of {num_workers}: out of range"
        )
    if not order:
        raise ValueError("no shards to read")
    slots, slot = world_size * num_workers, rank * num_workers + worker
    if len(order) >= slots:
        return Assignment(tuple(order[slot::slots]))
    return Assignment(tuple(order), stride=slots, phase=slot)


def slot_count(a: Assignment, counts: Sequence[int]) -> int:
    """Samples slot ``a`` yields in an epoch, given every shard's sample count."""
    total = sum(counts[i] for i in a.shards)
    return max(0, math.ceil((total - a.phase) / a.stride))


def slot_batches(count: int, batch_size: int, drop_last: bool) -> int:
    """Batches a slot of ``count`` samples makes."""
    return count // batch_size if drop_last else math.ceil(count / batch_size)


def rank_batches(
    counts: Sequence[int],
    order: Sequence[int],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    drop_last: bool,
) -> list[int]:
    """The number of batches each rank could make this epoch (NOTE [ Equal batches per rank ])."""
    out = []
    for rank in range(world_size):
        n = 0
        for worker in range(num_workers):
            a = assign(order, rank=rank, world_size=world_size, worker=worker, num_workers=num_workers)
            n += slot_batches(slot_count(a, counts), batch_size, drop_last)
        out.append(n)
    return out


class Draws:
    """The shuffle buffer's random picks: draw ``t`` is a pure function of (seed, epoch, rank, worker, t).

    Draws come in chunks of 4096 uniforms from a Philox generator keyed by the slot and the
    chunk number, so resuming at draw ``t`` regenerates one chunk instead of replaying ``t``.
    """

    def __init__(self, seed: int, epoch: int, rank: int, worker: int) -> None:
        self._words = [_u64(seed), _u64(epoch), _u64(rank), _u64(worker)]
        self._chunk = -1
        self._values = np.empty(0)

    def pick(self, t: int, n: int) -> int:
        """Draw number ``t`` as an index in ``[0, n)``."""
        chunk, pos = divmod(t, _CHUNK)
        if chunk != self._chunk:
            key = np.random.SeedSequence([*self._words, chunk])
            self._values = np.random.Generator(np.random.Philox(key)).random(_CHUNK).tolist()
            self._chunk = chunk
        return min(int(self._values[pos] * n), n - 1)


def _u64(value: int) -> int:
    return int(value) & 0xFFFFFFFFFFFFFFFF
