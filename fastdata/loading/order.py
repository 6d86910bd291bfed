"""The epoch model: one order per epoch, split over ranks, resumable on any cluster.

``epoch_order(counts, seed=, epoch=, shuffle=, window=)`` is the order of every sample of
an epoch, a pure function of the shard counts and ``(seed, epoch)``. ``Split`` cuts what is
left of an epoch into one contiguous stretch per rank, and ``Split.schedule(rank)`` is the
rank's stream of positions in that order, cut into batches.

NOTE [ One order, split by ranges ]
The epoch's order is global: the shard list is permuted by ``(seed, epoch)``, its samples
are laid end to end, consecutive whole shards are grouped into *windows* of at least
``window`` samples (the shuffle buffer made exact) and each window is permuted. Nothing
here depends on the number of ranks or workers, so the order of an epoch is the same on
every cluster, and so is each sample's augmentation: it is keyed by the sample's position
in this order (NOTE [ Per-sample randomness ] in ``fastdata.loading.engine``).

A ``Split`` gives rank ``r`` of ``W`` the ``r``-th of ``W`` contiguous, equally long
stretches of the samples not yet delivered. A stretch of the order covers whole windows in
its middle and part of a window at each end, so a rank reads about ``1/W`` of the shards
plus at most two windows, one window at a time. Workers (threads) only make the rank's
batches in parallel; they do not change the order at all. We chose ranges over Mosaic's
canonical partitions (which must be kept as a fixed node count) and over per-split cursors
(a state per split): with ranges the state is the list of undelivered intervals of the
order, which a new cluster of any shape can cut again.

NOTE [ Equal batches per rank ]
DDP hangs if one rank runs one batch more than another, so every rank of a split gets the
same number of batches. With ``drop_last=False`` every sample comes exactly once: of
``R`` samples left, each rank gets ``R // W`` or one more, cut into
``ceil(ceil(R / W) / B)`` batches of ``B`` but the last, and a rank one sample short
whose last batch would be empty moves one sample of its last full batch there (so the
last two batches of a rank may be short). Only where that cannot work (fewer samples than
ranks, or ``B = 1`` with a remainder) are the ranks evened out by repeating the first
samples of the split, as torch's ``DistributedSampler`` pads. With ``drop_last=True``
every rank gets ``R // (W*B)`` full batches and the last samples of the order (fewer than
``W*B``) are dropped this epoch (the order changes every epoch).

NOTE [ Elastic resumption ]
Ranks of a data-parallel job deliver their batches in lock step, so "every rank delivered
``k`` batches of this split" is the whole progress of an epoch: the state is the epoch,
the split's intervals, its ``(world_size, batch_size)`` and ``k`` (``Split.state``). On
the same topology a restored split continues at batch ``k``: the batches are bit-identical
to an uninterrupted run's. On another topology (``W'`` ranks, or another batch size) the
samples not yet delivered (``Split.remaining``: each rank's stretch after its first ``k*B``
samples, padding left out) become the intervals of a new split over the new ranks: every
remaining sample is delivered exactly once more, with the augmentation it would have had,
and nothing already delivered comes back. Each change of
topology adds at most ``W`` intervals to the state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Cursor", "Schedule", "Split", "World", "epoch_order", "intervals_positions", "shard_permutation"]

_MASK = 0xFFFFFFFFFFFFFFFF


class World:
    """This process's place among the ranks: as given, else from ``torch.distributed``, else
    rank 0 of 1 (read when an epoch starts, so a process group made later counts).

    Raises:
        ValueError: only one of ``rank`` and ``world_size`` given, or a rank out of range.
    """

    def __init__(self, rank: int | None, world_size: int | None) -> None:
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ValueError(f"give both rank and world_size with 0 <= rank < world_size, got {rank}, {world_size}")
        self.rank, self.world_size = rank, world_size

    def __call__(self) -> tuple[int, int]:
        """``(rank, world_size)``."""
        if self.world_size is not None:
            return self.rank, self.world_size
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1


def _generator(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([int(w) & _MASK for w in words])))


def shard_permutation(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of ``n`` shards: a permutation by ``(seed, epoch)``, or ``0..n-1``."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return _generator(seed, epoch, 0x5A4D).permutation(n).astype(np.int64)


def epoch_order(
    counts: Sequence[int], *, seed: int, epoch: int, shuffle: bool, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(shard, member)`` of every sample of the epoch, in the epoch's order.

    NOTE [ One order, split by ranges ]: shards permuted, laid end to end, windows of whole
    shards holding at least ``window`` samples permuted (without ``shuffle``, the shards'
    own order).
    """
    counts = np.asarray(counts, np.int64)
    shards = shard_permutation(len(counts), seed=seed, epoch=epoch, shuffle=shuffle)
    sizes = counts[shards]
    shard = np.repeat(shards, sizes)
    ends = np.cumsum(sizes)
    member = np.arange(len(shard), dtype=np.int64) - np.repeat(ends - sizes, sizes)
    if not shuffle or len(shard) == 0:
        return shard, member
    # windows: a shard closes its window once the window holds >= window samples
    closes = np.zeros(len(sizes), np.int64)
    start = 0
    for i, end in enumerate(ends.tolist()):  # one step per shard
        if end - start >= window:
            closes[i], start = 1, end
    win_of_shard = np.concatenate([[0], np.cumsum(closes)[:-1]])
    win = np.repeat(win_of_shard, sizes)
    keys = _generator(seed, epoch, 0x57494E).random(len(shard))
    perm = np.lexsort((keys, win))
    return shard[perm], member[perm]


def intervals_positions(intervals: np.ndarray) -> np.ndarray:
    """The positions ``[lo, hi)`` of each interval, concatenated."""
    if len(intervals) == 0:
        return np.empty(0, np.int64)
    lengths = intervals[:, 1] - intervals[:, 0]
    starts = np.repeat(intervals[:, 0] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return starts + np.arange(int(lengths.sum()), dtype=np.int64)


def _as_intervals(positions: np.ndarray) -> np.ndarray:
    """Sorted positions as ``(n, 2)`` int64 ``[lo, hi)`` runs."""
    if len(positions) == 0:
        return np.empty((0, 2), np.int64)
    positions = np.unique(positions)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    lo = positions[np.concatenate([[0], breaks])]
    hi = positions[np.concatenate([breaks - 1, [len(positions) - 1]])] + 1
    return np.stack([lo, hi], axis=1).astype(np.int64)


@dataclass(frozen=True)
class Schedule:
    """One rank's share of a split (see the module docstring).

    Attributes:
        pos: int64 position in the epoch's order of each sample of the rank's stream.
        starts: int64 batch boundaries: batch ``b`` is ``pos[starts[b]:starts[b + 1]]``.
    """

    pos: np.ndarray
    starts: np.ndarray

    @property
    def batches(self) -> int:
        """Number of batches."""
        return len(self.starts) - 1


@dataclass(frozen=True)
class Split:
    """The rest of an epoch cut over ``world_size`` ranks (NOTE [ One order, split by ranges ]).

    Attributes:
        epoch: the epoch.
        intervals: ``(n, 2)`` int64 ``[lo, hi)`` positions of the order still to deliver
            when the split was made, sorted.
        world_size, batch_size: the topology of the split.
        drop_last: NOTE [ Equal batches per rank ].
    """

    epoch: int
    intervals: np.ndarray
    world_size: int
    batch_size: int
    drop_last: bool

    @classmethod
    def whole(cls, epoch: int, size: int, world_size: int, batch_size: int, drop_last: bool) -> Split:
        """A fresh epoch of ``size`` samples."""
        spans = np.array([[0, size]], np.int64) if size else np.empty((0, 2), np.int64)
        return cls(int(epoch), spans, int(world_size), int(batch_size), bool(drop_last))

    @property
    def left(self) -> int:
        """Samples still to deliver when the split was made."""
        return int((self.intervals[:, 1] - self.intervals[:, 0]).sum())

    @property
    def padded(self) -> bool:
        """Whether ranks are evened out with repeated samples (NOTE [ Equal batches per rank ])."""
        return not self.drop_last and self.left % self.world_size != 0 and (
            self.batch_size == 1 or self.left < self.world_size
        )

    def lengths(self) -> np.ndarray:
        """Samples each rank delivers (NOTE [ Equal batches per rank ])."""
        w, b, left = self.world_size, self.batch_size, self.left
        if self.drop_last:
            return np.full(w, (left // (w * b)) * b, np.int64)
        if self.padded:
            return np.full(w, math.ceil(left / w), np.int64)
        return np.full(w, left // w, np.int64) + (np.arange(w) < left % w)

    @property
    def batches(self) -> int:
        """Batches every rank delivers."""
        return math.ceil(int(self.lengths().max(initial=0)) / self.batch_size)

    @property
    def per_rank(self) -> int:
        """The most samples a rank delivers."""
        return int(self.lengths().max(initial=0))

    def _stream(self) -> np.ndarray:
        """The split's positions in order, padded when ``padded``."""
        flat = intervals_positions(self.intervals)
        need = int(self.lengths().sum())
        if need <= len(flat):
            return flat[:need]
        return np.concatenate([flat, flat[: need - len(flat)]])

    def _starts(self, length: int) -> np.ndarray:
        """Batch boundaries of a rank's ``length`` samples: ``batches`` batches, full ones
        first; a rank one sample short of the others moves a sample of its last full batch
        into its last one, so that no batch is empty."""
        n, b = self.batches, self.batch_size
        sizes = np.full(n, b, np.int64)
        if n:
            sizes[-1] = length - (n - 1) * b
            if sizes[-1] == 0 and n > 1:
                sizes[-2], sizes[-1] = b - 1, 1
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(sizes, out=starts[1:])
        return starts

    def schedule(self, rank: int) -> Schedule:
        """Rank ``rank``'s positions and batches.

        Raises:
            ValueError: ``rank`` out of range.
        """
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} out of range for world_size {self.world_size}")
        lengths = self.lengths()
        lo = int(lengths[:rank].sum())
        return Schedule(self._stream()[lo : lo + int(lengths[rank])], self._starts(int(lengths[rank])))

    def remaining(self, delivered: int) -> np.ndarray:
        """The intervals still to deliver after every rank delivered ``delivered`` batches
        (NOTE [ Elastic resumption ]): neither a sample delivered (as itself or as a repeat
        that evened the ranks out) nor one dropped by ``drop_last`` is carried over."""
        stream = self._stream()
        flat = intervals_positions(self.intervals)
        if self.drop_last:
            flat = stream  # the dropped tail is not carried over
        done, lo = [], 0
        for q in self.lengths().tolist():
            done.append(stream[lo : lo + int(self._starts(q)[min(delivered, self.batches)])])
            lo += q
        return _as_intervals(flat[~np.isin(flat, np.concatenate([[], *done]).astype(np.int64))])

    def resplit(self, delivered: int, world_size: int, batch_size: int) -> Split:
        """The rest of the epoch after ``delivered`` batches, cut for another topology."""
        return Split(self.epoch, self.remaining(delivered), int(world_size), int(batch_size), self.drop_last)

    def state(self, delivered: int) -> dict:
        """The split as plain values, with ``delivered`` batches done (NOTE [ Elastic resumption ])."""
        return {
            "epoch": self.epoch,
            "intervals": self.intervals.tolist(),
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "batches": int(delivered),
        }

    @classmethod
    def from_state(cls, state: dict, drop_last: bool) -> tuple[Split, int]:
        """The split and the batches delivered of a ``state()``."""
        spans = np.asarray(state["intervals"], np.int64).reshape(-1, 2)
        split = cls(int(state["epoch"]), spans, int(state["world_size"]), int(state["batch_size"]), drop_last)
        return split, int(state["batches"])


class Cursor:
    """Where a dataset stands in its epochs: the epoch, and the split in effect with the
    batches of it delivered (NOTE [ Elastic resumption ]).

    ``header`` is what fixes the order besides the epoch (seed, shard list...): it goes into
    every state and a state with another header is refused on load.
    """

    VERSION = 2

    def __init__(self, header: dict, drop_last: bool) -> None:
        self.header = {"version": self.VERSION, **header}
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._resume: dict | None = None
        self._consumed: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        """The next iteration runs ``epoch`` from its start."""
        self.epoch, self._resume = int(epoch), None

    def state_dict(self) -> dict:
        """The state after the last batch delivered, as plain values."""
        state = self._resume or self._consumed or {**self.header, **_fresh(self.epoch)}
        return json.loads(json.dumps(state))  # a deep, plain copy

    def load_state_dict(self, state: Mapping) -> None:
        """Makes the next ``start`` continue where ``state`` was taken.

        Raises:
            ValueError: another version, or another order (a key of the header differs).
        """
        if state.get("version") != self.VERSION:
            raise ValueError(f"this state_dict has version {state.get('version')!r}, this fastdata reads "
                             f"version {self.VERSION}: resume with the fastdata that saved it")  # fmt: skip
        for key, value in self.header.items():
            if json.loads(json.dumps(state.get(key))) != json.loads(json.dumps(value)):
                what = "the shard list" if key == "shards" else f"{key}={state.get(key)!r}"
                now = "another" if key == "shards" else repr(value)
                raise ValueError(f"state_dict was taken with {what}, this run has {now}: resume "
                                 "with the dataset's arguments of the run that saved it")  # fmt: skip
        self.epoch = int(state["epoch"])
        self._resume = dict(state) if state.get("intervals") is not None else None

    def start(self, size: int, batch_size: int, world_size: int) -> tuple[Split, int]:
        """The split to run next (the epoch counts as started) and the batches of it done."""
        resume, self._resume = self._resume, None
        if resume is None:
            split, done = Split.whole(self.epoch, size, world_size, batch_size, self.drop_last), 0
        else:
            split, done = Split.from_state(resume, self.drop_last)
            if (split.world_size, split.batch_size) != (world_size, batch_size):
                split, done = split.resplit(done, world_size, batch_size), 0
        self.epoch = split.epoch + 1
        return split, done

    def delivered(self, split: Split, batches: int, samples: int) -> None:
        """Records that every rank delivered ``batches`` batches of ``split`` (``samples`` here)."""
        if batches >= split.batches:
            self._consumed = {**self.header, **_fresh(split.epoch + 1)}
        else:
            self._consumed = {**self.header, **split.state(batches), "samples": int(samples)}


def _fresh(epoch: int) -> dict:
    return {"epoch": int(epoch), "intervals": None, "world_size": None, "batch_size": None, "batches": 0, "samples": 0}
