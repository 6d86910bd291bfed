"""An epoch of one rank as index arithmetic: which sample goes where, computed before reading.

``epoch_schedule(...)`` returns a ``Schedule``: for every position of the rank's epoch
stream (batches in delivery order, samples in batch order) the shard and the sample number
within it, and the batch boundaries. It is a pure function of the shard counts and
``(seed, epoch, rank, world_size, num_workers, batch_size, buffer_size)``, so a resumed
run recomputes it and skips the batches already delivered: the state of a running epoch
is just ``(epoch, batches delivered)``.

NOTE [ Shuffling by windows of whole shards ]
Each slot (rank, worker) takes its shards as ``fastdata.loading.sampling.assign`` says (the shard
order permuted by ``(seed, epoch)``, striding over samples when there are fewer shards
than slots). Its samples are grouped into *windows* of consecutive shards, each closed
once it holds at least ``buffer_size`` samples, and each window is permuted by a Philox
generator keyed by ``(seed, epoch, rank, worker, window)``. This is the shuffle buffer of
the streaming path made exact: a window of whole shards is in memory at once, every
sample in it is equally likely at every position, and the order is known in advance.
Without shuffling the windows keep their order. A slot's samples are cut into batches
(``drop_last`` drops its partial last one) and a rank's batches are its slots' batches in
turn, limited to the smallest rank's count (NOTE [ Equal batches per rank ] in
``fastdata.loading.sampling``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastdata.loading.sampling import assign, rank_batches

__all__ = ["Schedule", "epoch_schedule"]


@dataclass(frozen=True)
class Schedule:
    """One rank's epoch (see the module docstring).

    Attributes:
        shard: int64 shard index (into the dataset's URL list) per stream position.
        member: int64 sample number within that shard per position.
        starts: int64 batch boundaries: batch ``b`` is positions ``starts[b]:starts[b + 1]``.
    """

    shard: np.ndarray
    member: np.ndarray
    starts: np.ndarray

    @property
    def batches(self) -> int:
        """Number of batches."""
        return len(self.starts) - 1


def epoch_schedule(
    counts: Sequence[int],
    order: Sequence[int],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    drop_last: bool,
    shuffle: bool,
    buffer_size: int,
) -> Schedule:
    """The rank's epoch (NOTE [ Shuffling by windows of whole shards ])."""
    slots = [
        _slot_batches(counts, order, seed, epoch, rank, world_size, w, num_workers, batch_size,
                      drop_last, buffer_size if shuffle else 0)
        for w in range(num_workers)
    ]  # fmt: skip
    limit = min(rank_batches(counts, order, world_size=world_size, num_workers=num_workers,
                             batch_size=batch_size, drop_last=drop_last))  # fmt: skip
    picked: list[tuple[np.ndarray, np.ndarray]] = []
    cursor = [0] * num_workers
    turn = 0
    while len(picked) < limit and any(cursor[w] < len(slots[w]) for w in range(num_workers)):
        w, turn = turn, (turn + 1) % num_workers
        if cursor[w] < len(slots[w]):
            picked.append(slots[w][cursor[w]])
            cursor[w] += 1
    sizes = np.array([len(s) for s, _ in picked], np.int64)
    starts = np.zeros(len(picked) + 1, np.int64)
    np.cumsum(sizes, out=starts[1:])
    cat = (
        (lambda i: np.concatenate([p[i] for p in picked]))
        if picked
        else (lambda i: np.empty(0, np.int64))
    )
    return Schedule(cat(0), cat(1), starts)


def _slot_batches(
    counts, order, seed, epoch, rank, world, worker, workers, batch_size, drop_last, window
):
    """One slot's batches as ``(shard, member)`` array pairs."""
    a = assign(order, rank=rank, world_size=world, worker=worker, num_workers=workers)
    sizes = np.array([counts[s] for s in a.shards], np.int64)
    shard = np.repeat(np.array(a.shards, np.int64), sizes)
    member = np.arange(len(shard), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    kept = np.arange(len(shard)) % a.stride == a.phase
    shard, member = shard[kept], member[kept]
    if window > 0:
        shard, member = _permute_windows(shard, seed, epoch, rank, worker, window, member)
    n, out = len(shard), []
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        if hi - lo == batch_size or not drop_last:
            out.append((shard[lo:hi], member[lo:hi]))
    return out


def _permute_windows(shard, seed, epoch, rank, worker, window, member):
    """Permutes each window of whole shards holding at least ``window`` samples."""
    change = np.flatnonzero(np.diff(shard)) + 1
    bounds = np.concatenate([[0], change, [len(shard)]])
    out = np.empty(len(shard), np.int64)
    lo, k = 0, 0
    for b in bounds[1:]:
        if b - lo < window and b != len(shard):
            continue
        words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in (seed, epoch, rank, worker, k, 0x57494E)]
        gen = np.random.Generator(np.random.Philox(np.random.SeedSequence(words)))
        out[lo:b] = lo + gen.permutation(b - lo)
        lo, k = b, k + 1
    return shard[out], member[out]
