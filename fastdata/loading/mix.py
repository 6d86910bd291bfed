"""``Mix``: weighted mixing of shard datasets, deterministic and exactly resumable.

Usage::

    web = ShardDataset("web-{000000..000999}.tar", transform=train_tf, shuffle=True)
    books = ShardDataset("books-{000000..000099}.tar", transform=train_tf, shuffle=True)
    mix = fastdata.Mix([web, books], weights=[0.7, 0.3], stop="first_exhausted")
    loader = fastdata.DataLoader(mix, batch_size=256, num_workers=2)
    for images, labels in loader:
        ...
    mix.stats.sources          # samples delivered per source

The mix is index arithmetic on top of each source's order (``fastdata.loading.order``):
position ``t`` of a mix epoch names a source and that source's next sample, and the mix
epoch is then split over ranks, resumed and resplit exactly like a ``ShardDataset`` epoch
(NOTE [ Elastic resumption ]). Sources keep their own transforms and fields; their
batches must collate (the same image shape and field kinds). ``TokenDataset`` sources mix
the same way (all sources of one kind): a batch is the token dict of their rows, its
``cu_seqlens`` made again for the merged rows.

NOTE [ Largest sampling error first ]
Position ``t`` (0, 1, 2, ...) takes the source whose count so far lags its weight most:
``argmax_i w_i * (t + 1) - n_i(t)``, ties to the first source (the rule of Megatron's
blended datasets). The sequence depends only on the weights. After every prefix of length
``t`` no source is a whole sample ahead of ``w_i * t`` (the chosen source had the largest
``d_i + w_i``, at least ``1/S`` as these sum to 1, so its deficit ``d_i`` stays above -1),
and none lags by two samples or more (measured on random weights of up to 8 sources: at
most 1.23; ``tests/test_mix.py`` checks both bounds).

What an epoch of the mix is (``stop``):

- ``"first_exhausted"``: it ends just before a source would have to give a sample twice;
- ``"all_exhausted"``: it ends once every source gave each of its samples; a source that
  runs out before starts a new pass (its order for the next pass is a new permutation);
- an integer: that many samples, every source cycling through passes as needed.

Pass ``c`` of source ``i`` in mix epoch ``e`` is that source's order (its seed, shuffle and
window) for epoch ``e``, with its seed offset by ``c``: pass 0 is the source's own epoch.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data
from numba import njit

from fastdata.errors import FastdataError
from fastdata.loading.batches import BatchStream, Rows
from fastdata.loading.buffers import batches_ahead
from fastdata.loading.engine import EngineStats
from fastdata.loading.fields import sample_field
from fastdata.loading.order import Cursor, Split, World, epoch_order
from fastdata.loading.shard_dataset import ShardDataset, _check_iter_args
from fastdata.loading.tokens import TokenDataset

__all__ = ["Mix", "mix_sequence"]

STOPS = ("first_exhausted", "all_exhausted")
_PASS_SEED = 0x9E3779B97F4A7C15  # seed offset of a source's later passes
_SAMPLE_CHUNK = 32


@njit(cache=True)
def _greedy(weights: np.ndarray, n: int) -> np.ndarray:
    counts = np.zeros(len(weights), np.int64)
    out = np.empty(n, np.int64)
    for t in range(n):
        best, gap = 0, -1e300
        for i in range(len(weights)):
            g = weights[i] * (t + 1) - counts[i]
            if g > gap + 1e-12:
                best, gap = i, g
        out[t] = best
        counts[best] += 1
    return out


def mix_sequence(weights: Sequence[float], n: int) -> np.ndarray:
    """The source of each of the first ``n`` positions (NOTE [ Largest sampling error first ])."""
    w = np.asarray(weights, np.float64)
    return _greedy(w / w.sum(), int(n))


def _epoch_length(weights: np.ndarray, sizes: np.ndarray, stop: str | int) -> int:
    """Positions of one mix epoch (see ``stop`` in the module docstring)."""
    if not isinstance(stop, str):
        return int(stop)
    w = weights / weights.sum()
    live = w > 0
    bound = sizes[live] / w[live]
    limit = int((bound.min() if stop == "first_exhausted" else bound.max()) + len(w) + 2)
    seq = mix_sequence(w, limit)
    counts = np.zeros((limit + 1, len(w)), np.int64)
    np.add.at(counts, (np.arange(1, limit + 1), seq), 1)
    counts = np.cumsum(counts, axis=0)  # counts[t]: draws per source in the first t positions
    if stop == "first_exhausted":
        ok = np.all(counts[:, live] <= sizes[live], axis=1)
        return int(np.flatnonzero(ok).max())
    done = np.all(counts[:, live] >= sizes[live], axis=1)
    return int(np.flatnonzero(done).min())


class Mix(torch.utils.data.IterableDataset):
    """Several ``ShardDataset`` sources mixed by weight (see the module docstring).

    Args:
        datasets: the sources, all ``ShardDataset`` or all ``TokenDataset``; each keeps its
            transform, fields, shuffle, window and seed (their own ``rank``/``world_size`` are
            not used: the mix is split).
        weights: each source's share of the samples (normalised; 0 leaves a source out).
        stop: ``"first_exhausted"``, ``"all_exhausted"`` or a number of samples per epoch.
        names: the sources' names in ``stats.sources`` (default ``"0"``, ``"1"``, ...).
        rank, world_size: as for ``ShardDataset`` (default from ``torch.distributed``).
        drop_last: as for ``ShardDataset`` (NOTE [ Equal batches per rank ]).

    Raises:
        ValueError: no sources, weights that do not match them or are negative or all
            zero, an unknown ``stop``, or a source that is not a ``ShardDataset``.
    """

    def __init__(
        self,
        datasets: Sequence[ShardDataset],
        weights: Sequence[float],
        *,
        stop: str | int = "first_exhausted",
        names: Sequence[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.sources = list(datasets)
        if not self.sources:
            raise ValueError("Mix needs at least one dataset")
        kind = ShardDataset if isinstance(self.sources[0], ShardDataset) else TokenDataset
        for i, src in enumerate(self.sources):
            if not isinstance(src, kind):
                raise ValueError(f"Mix mixes ShardDatasets or TokenDatasets, all of one kind; source {i} is a "
                                 f"{type(src).__name__}, source 0 a {type(self.sources[0]).__name__}")  # fmt: skip
        self._tokens = kind is TokenDataset
        w = np.asarray([float(v) for v in weights], np.float64)
        if len(w) != len(self.sources) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(self.sources)} finite numbers >= 0, not all 0; got {list(weights)}")
        if not (stop in STOPS or (isinstance(stop, numbers.Integral) and not isinstance(stop, bool) and stop > 0)):
            raise ValueError(f"stop must be one of {STOPS} or a number of samples > 0, got {stop!r}")
        self.world = World(rank, world_size)
        self.weights, self.stop, self.drop_last = w / w.sum(), stop, bool(drop_last)
        self.names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(self.sources))]
        if len(self.names) != len(self.sources):
            raise ValueError(f"give one name per source: {len(self.names)} names for {len(self.sources)} sources")
        header = {"mix": {"weights": self.weights.tolist(), "stop": stop},
                  "sources": [src.cursor.header for src in self.sources]}  # fmt: skip
        self.cursor = Cursor(header, self.drop_last)
        self.stats = EngineStats()
        self._cache: tuple[int, Any] | None = None
        self._size: int | None = None

    def _length(self) -> int:
        """Positions of a mix epoch (the same every epoch: computed once)."""
        if self._size is None:
            self._size = self._count_positions()
        return self._size

    def _count_positions(self) -> int:
        sizes = np.array([src.units() if self._tokens else sum(src.counts()) for src in self.sources], np.int64)
        if np.any((sizes == 0) & (self.weights > 0)):
            empty = self.names[int(np.flatnonzero((sizes == 0) & (self.weights > 0))[0])]
            raise FastdataError(f"Mix source {empty!r} has no samples but a weight > 0")
        return _epoch_length(self.weights, sizes, self.stop)

    def __len__(self) -> int:
        """Samples of this rank's next epoch."""
        return Split.whole(self.cursor.epoch, self._length(), self.world()[1], 1, self.drop_last).per_rank

    def num_batches(self, batch_size: int, num_workers: int = 2) -> int:
        """Batches ``iter_batches(batch_size)`` yields on this rank next epoch."""
        del num_workers
        return Split.whole(self.cursor.epoch, self._length(), self.world()[1], int(batch_size), self.drop_last).batches

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next iteration runs."""
        self.cursor.set_epoch(epoch)

    def state_dict(self) -> dict:
        """The state after the last batch delivered (the keys of ``ShardDataset.state_dict``,
        the sources' order headers and the weights)."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Continues exactly where ``state`` was taken, on any number of ranks and workers.

        Raises:
            ValueError: the state was taken with other sources, weights or ``stop``.
        """
        self.cursor.load_state_dict(state)

    # -- the epoch as index arithmetic ------------------------------------------------------

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and draw number of every position of mix epoch ``epoch``."""
        if self._cache is None or self._cache[0] != epoch:
            seq = mix_sequence(self.weights, self._length())
            draw = np.empty(len(seq), np.int64)
            for i in range(len(self.sources)):
                mine = seq == i
                draw[mine] = np.arange(int(mine.sum()))
            self._cache = (epoch, (seq, draw))
        return self._cache[1]

    def _rows(self, epoch: int, pos: np.ndarray, starts: np.ndarray) -> list[tuple[Rows, np.ndarray, list]]:
        """Per source: its rows of these positions, its part of each batch and which batches."""
        seq, draw = self._epoch(epoch)
        src, j = seq[pos], draw[pos]
        batch_of = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
        out = []
        for i, ds in enumerate(self.sources):
            mine = np.flatnonzero(src == i)
            if len(mine) == 0:
                out.append((None, np.empty(0, np.int64), []))
                continue
            n = sum(ds.counts())
            passes, k = np.divmod(j[mine], n)
            shard, member = np.empty(len(mine), np.int64), np.empty(len(mine), np.int64)
            for c in np.unique(passes).tolist():
                order = epoch_order(ds.counts(), seed=ds.seed + c * _PASS_SEED, epoch=epoch, shuffle=ds.shuffle,
                                    window=ds.buffer_size)  # fmt: skip
                at = passes == c
                shard[at], member[at] = order[0][k[at]], order[1][k[at]]
            batches, first = np.unique(batch_of[mine], return_index=True)
            sub = np.append(first, len(mine)).astype(np.int64)
            out.append((Rows(shard, member, pos[mine], sub), mine - starts[batch_of[mine]], batches.tolist()))
        return out

    # -- iteration ----------------------------------------------------------------------------

    def __fastdata_iter__(self, loader: Any) -> Iterator:
        """How ``fastdata.DataLoader`` iterates the mix: ``iter_batches`` with its arguments."""
        return self.iter_batches(
            loader.batch_size, num_workers=loader.num_workers, device=getattr(loader, "device", None),
            memory_format=getattr(loader, "memory_format", torch.contiguous_format),
            timeout=loader.timeout, prefetch=loader.prefetch_factor or 2, stats=getattr(loader, "stats", None),
        )  # fmt: skip

    def iter_batches(self, batch_size: int, *, num_workers: int = 2, device: Any = None,
                     memory_format: torch.memory_format = torch.contiguous_format, timeout: float = 0,
                     prefetch: int = 2, stats: EngineStats | None = None) -> Iterator:  # fmt: skip
        """One epoch of mixed batches, as ``ShardDataset.iter_batches`` yields them."""
        _check_iter_args(batch_size, num_workers, timeout, prefetch)
        stats = stats if stats is not None else self.stats
        rank, world = self.world()
        split, done = self.cursor.start(self._length(), int(batch_size), world)
        schedule = split.schedule(rank)
        if self._tokens:
            yield from self._token_epoch(split, schedule, done, stats, device)
            return
        ahead = batches_ahead(int(num_workers), prefetch, self.sources[0]._batch_bytes(int(batch_size)))
        opts = dict(num_workers=int(num_workers), device=device, memory_format=memory_format, timeout=timeout,
                    ahead=ahead)  # fmt: skip
        batches = self._batches(split.epoch, schedule.pos, schedule.starts, done, stats, opts, collate=True)
        for b, images, extras in batches:
            self.cursor.delivered(split, b + 1, int(schedule.starts[b + 1]))
            yield extras if images is None else ([images, *extras] if self._fields else images)
        self.cursor.delivered(split, split.batches, len(schedule.pos))

    @property
    def _fields(self) -> bool:
        return bool(self.sources[0].fields)

    def _batches(self, epoch: int, pos: np.ndarray, starts: np.ndarray, done: int, stats: EngineStats, opts: dict,
                 collate: bool) -> Iterator:  # fmt: skip
        parts = self._rows(epoch, pos, starts)
        streams, own = {}, {}
        for i, (rows, _, batches) in enumerate(parts):
            if rows is None:
                continue
            own[i] = EngineStats()
            first = sum(1 for b in batches if b < done)
            streams[i] = iter(BatchStream(self.sources[i], rows, epoch=epoch, first=first, stats=own[i],
                                          collate=collate, **opts))  # fmt: skip
        member_of = {i: dict(zip(p[2], np.split(p[1], p[0].starts[1:-1]), strict=True))
                     for i, p in enumerate(parts) if p[0] is not None}  # fmt: skip
        skipped = 0
        try:
            for b in range(done, len(starts) - 1):
                t0 = time.perf_counter()
                n = int(starts[b + 1] - starts[b])
                got = [(i, member_of[i][b], *next(streams[i])[1:]) for i in streams if b in member_of[i]]
                images, extras = _assemble(got, n, self.names, collate)
                now = sum(s.skipped for s in own.values())
                stats.skipped, skipped = stats.skipped + now - skipped, now
                for s in own.values():
                    stats.skipped_keys.extend(s.skipped_keys[len(stats.skipped_keys):100])
                for i, rows, *_ in got:
                    stats.sources[self.names[i]] = stats.sources.get(self.names[i], 0) + len(rows)
                stats.batches, stats.samples = stats.batches + 1, stats.samples + n
                stats.wait_s += time.perf_counter() - t0
                stats.elapsed_s += time.perf_counter() - t0
                yield b, images, extras
        finally:
            for s in streams.values():
                s.close()

    def _token_units(self, epoch: int, pos: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per token source: which of these positions it gives, and its units there."""
        seq, draw = self._epoch(epoch)
        src, j = seq[pos], draw[pos]
        out = []
        for i, ds in enumerate(self.sources):
            mine = np.flatnonzero(src == i)
            passes, k = np.divmod(j[mine], ds.units())
            units = np.empty(len(mine), np.int64)
            for c in np.unique(passes).tolist():
                at = passes == c
                units[at] = ds.unit_order(epoch, ds.seed + c * _PASS_SEED)[k[at]]
            out.append((mine, units))
        return out

    def _token_epoch(self, split: Split, schedule: Any, done: int, stats: EngineStats, device: Any) -> Iterator:
        """One epoch of mixed token batches (dicts, as ``TokenDataset`` yields them)."""
        parts = self._token_units(split.epoch, schedule.pos)
        starts = schedule.starts
        for b in range(done, len(starts) - 1):
            t0 = time.perf_counter()
            lo, hi = int(starts[b]), int(starts[b + 1])
            got = []
            for i, (mine, units) in enumerate(parts):
                sel = (mine >= lo) & (mine < hi)
                if sel.any():
                    batch = self.sources[i]._batch(units[sel])
                    batch.pop("_tokens", None)
                    got.append((mine[sel] - lo, batch))
                    stats.sources[self.names[i]] = stats.sources.get(self.names[i], 0) + int(sel.sum())
            batch = _merge_rows(got, hi - lo)
            stats.batches, stats.samples = stats.batches + 1, stats.samples + hi - lo
            stats.elapsed_s += time.perf_counter() - t0
            self.cursor.delivered(split, b + 1, hi)
            yield batch if device is None else {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        self.cursor.delivered(split, split.batches, len(schedule.pos))

    def __iter__(self) -> Iterator:
        """Single samples for torch's DataLoader: the rank's share, torch's worker ``w`` of
        ``K`` taking every ``K``-th sample from the ``w``-th."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.world()
        split = Split.whole(self.cursor.epoch, self._length(), world, 1, self.drop_last)
        pos = split.schedule(rank).pos[worker::workers]
        starts = np.unique(np.minimum(np.arange(0, len(pos) + _SAMPLE_CHUNK, _SAMPLE_CHUNK), len(pos)))
        if self._tokens:
            from fastdata.loading.order import Schedule

            for batch in self._token_epoch(split, Schedule(pos, starts), 0, self.stats, None):
                for r in range(len(batch["input_ids"])):
                    yield {k: v[r] for k, v in batch.items() if k != "cu_seqlens"}
            return
        opts = dict(num_workers=0, device=None, memory_format=torch.contiguous_format, timeout=0, ahead=1)
        kinds = list(self.sources[0].fields.values())
        for _, images, extras in self._batches(split.epoch, pos, starts, 0, self.stats, opts, collate=False):
            for r in range(len(images) if images is not None else len(extras[0])):
                extra = tuple(sample_field(kind, e[r], self.sources[0].pad_value) for kind, e in zip(kinds, extras, strict=True))
                if images is None:
                    yield extra
                else:
                    yield (images[r], *extra) if self._fields else images[r]


def _assemble(got: list, n: int, names: list[str], collate: bool) -> tuple[Any, list]:
    """One batch of ``n`` rows from the sources' parts ``(source, rows, images, extras)``."""
    if len(got) == 1 and len(got[0][1]) == n:
        return got[0][2], got[0][3]
    first = got[0]
    images = None
    if first[2] is not None:
        shape = tuple(first[2].shape[1:])
        for i, _, imgs, _ in got:
            if tuple(imgs.shape[1:]) != shape or imgs.dtype != first[2].dtype:
                raise FastdataError(
                    f"Mix sources must give batches that collate: source {names[first[0]]!r} gives images "
                    f"{shape} {first[2].dtype}, source {names[i]!r} {tuple(imgs.shape[1:])} {imgs.dtype}"
                )
        layout = torch.channels_last if first[2].dim() == 4 and not first[2].is_contiguous() else torch.contiguous_format
        images = torch.empty((n, *shape), dtype=first[2].dtype, device=first[2].device, memory_format=layout)
        for _, rows, imgs, _ in got:
            images[torch.from_numpy(rows).to(images.device)] = imgs
    extras = []
    for f in range(len(first[3])):
        values = [(rows, part[f]) for _, rows, _, part in got]
        if all(isinstance(v, torch.Tensor) for _, v in values) and len({tuple(v.shape[1:]) for _, v in values}) == 1:
            out = values[0][1].new_empty((n, *values[0][1].shape[1:]))
            for rows, v in values:
                out[torch.from_numpy(rows)] = v
        elif all(isinstance(v, list) for _, v in values):
            out = [None] * n
            for rows, v in values:
                for r, item in zip(rows.tolist(), v, strict=True):
                    out[r] = item
        else:
            kinds = sorted({type(v).__name__ for _, v in values})
            raise FastdataError(f"Mix sources must give fields that collate: field {f} comes as {kinds}")
        extras.append(out)
    return images, extras


def _merge_rows(got: list[tuple[np.ndarray, dict]], n: int) -> dict[str, torch.Tensor]:
    """One token batch of ``n`` rows from the sources' parts ``(rows, batch)``; ``cu_seqlens``
    is made again from the merged ``segment_ids`` (a segment starts at every row and where
    the segment id changes, padding included, as ``fastdata.loading.packing.fill_rows`` counts)."""
    if len(got) == 1:
        return got[0][1]
    keys = [k for k in got[0][1] if k != "cu_seqlens"]
    for _, batch in got[1:]:
        if [k for k in batch if k != "cu_seqlens"] != keys or batch["input_ids"].shape[1:] != got[0][1]["input_ids"].shape[1:]:
            raise FastdataError("Mix sources must give batches that collate: the token datasets differ in "
                                f"mode or seq_len ({sorted(keys)} {tuple(got[0][1]['input_ids'].shape[1:])} against "
                                f"{sorted(batch)} {tuple(batch['input_ids'].shape[1:])})")  # fmt: skip
    out = {}
    for k in keys:
        first = got[0][1][k]
        merged = first.new_empty((n, *first.shape[1:]))
        for rows, batch in got:
            merged[torch.from_numpy(rows)] = batch[k]
        out[k] = merged
    if "cu_seqlens" in got[0][1]:
        seg = out["segment_ids"]
        change = torch.ones_like(seg, dtype=torch.bool)
        change[:, 1:] = seg[:, 1:] != seg[:, :-1]
        starts = torch.nonzero(change.flatten()).flatten()
        out["cu_seqlens"] = torch.cat([starts, torch.tensor([seg.numel()])]).to(torch.int32)
    return out
