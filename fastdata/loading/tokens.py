"""``TokenDataset``: token shards streamed as ``(B, T)`` batches for language models.

Usage::

    data = TokenDataset("tok/train-{000000..000099}.tar", seq_len=1024, mode="concat",
                        shuffle=True, seed=0)
    loader = fastdata.DataLoader(data, batch_size=32, num_workers=2)
    for epoch in range(epochs):
        for batch in loader:          # dict of tensors, see below
            logits = model(batch["input_ids"], position_ids=batch["position_ids"])
            loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())  # -100 ignored
        checkpoint = {"data": data.state_dict(), ...}   # at any batch

Modes (``fastdata.loading.packing``): ``"concat"`` cuts the dataset's token stream into rows
(pretraining), ``"aligned"`` packs whole documents (cut into pieces of at most ``T + 1``
tokens) into rows by best fit decreasing, one shard at a time (or ``window`` documents at a
time), and ``"padded"`` puts one document per row, truncated and padded (fine-tuning,
classification). A batch of the packed modes is ``{"input_ids", "targets", "position_ids"}``
(int64 ``(B, T)``; targets -100 where none), ``"segment_ids"`` (int32 ``(B, T)``: the
document's number within its row, -1 on padding) and ``"cu_seqlens"`` (int32, the
segments' offsets in the flattened batch, FlashAttention's varlen convention); of the
padded mode ``{"input_ids", "targets", "attention_mask"}`` (bool ``(B, T)``), ``"lengths"``
and ``"labels"`` (int64 ``(B,)``, -1 without a label).

The *units* of an epoch are rows (concat, aligned) or documents (padded), numbered across
the shards in list order; their counts come from the index (or the shards' small metadata
members), never from reading tokens. They are ordered and split over ranks by the epoch
model of ``fastdata.loading.order`` (NOTE [ Token units in the epoch model ]).
Batches are gathered from the memory-mapped shards by compiled kernels, in a background thread.

State (``state_dict()``): the keys of ``ShardDataset.state_dict`` (``epoch``, the split in
effect, ``batches`` and ``samples`` delivered) plus what fixes the order (``mode``,
``seq_len``, ``seed``, ``shuffle``, ``buffer_size``, ``window``, ``drop_last``, ``shards``: a
hash of the shard names), checked on load. On the same cluster a resumed run yields
exactly the batches the uninterrupted run would; on another (ranks, workers, batch size)
every row not yet delivered comes once (NOTE [ Elastic resumption ]).
"""

from __future__ import annotations

import hashlib
import numbers
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from fastdata.loading.order import Cursor, Split, World, epoch_order
from fastdata.loading.packing import concat_rows, fill_rows, pack_documents
from fastdata.loading.token_source import TokenSource
from fastdata.shards.urls import expand_urls

__all__ = ["MODES", "TokenDataset", "TokenStats"]

MODES = ("concat", "aligned", "padded")


@dataclass
class TokenStats:
    """Counters summed over every epoch.

    Attributes:
        batches: batches yielded.
        rows: rows yielded.
        tokens: input tokens yielded, padding excluded.
        wait_s: seconds the consumer waited for a batch.
        elapsed_s: seconds from each epoch's first request to its last batch.
    """

    batches: int = 0
    rows: int = 0
    tokens: int = 0
    wait_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Throughput so far."""
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TokenDataset(torch.utils.data.IterableDataset):
    """Token shards as ``(B, T)`` batches (see the module docstring).

    Args:
        urls: token shard paths or URLs (brace patterns, ``pipe:``, fsspec).
        seq_len: ``T``, the inputs per row.
        mode: ``"concat"``, ``"aligned"`` or ``"padded"``.
        shuffle: a new order of the units every epoch.
        buffer_size: units of a shuffle window of whole shards (None: the whole epoch is one
            window; NOTE [ Token units in the epoch model ]).
        seed: seeds the order.
        index: path or URL of the shards' index (default: the one beside local shards;
            required for remote shards).
        rank: this process's rank; default from ``torch.distributed`` (0 without it).
        world_size: number of ranks; default from ``torch.distributed`` (1 without it).
        drop_last: every rank gets only full batches (default: fixed shapes); otherwise
            every unit comes once (NOTE [ Equal batches per rank ] in ``fastdata.loading.order``).
        dtype: dtype of ``input_ids``, ``targets`` and ``position_ids``.
        pad_id: the input token of padding (None: the index's ``pad`` token, else 0).
        window: documents packed together in ``"aligned"`` mode (None: a shard's).
        cache: opened shards kept at once.

    Raises:
        ValueError: an unknown mode, no shards, a bad ``seq_len`` or rank.
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        seq_len: int,
        *,
        mode: str = "concat",
        shuffle: bool = False,
        buffer_size: int | None = None,
        seed: int = 0,
        index: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
        dtype: torch.dtype = torch.int64,
        pad_id: int | None = None,
        window: int | None = None,
        cache: int = 16,
    ) -> None:
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError("TokenDataset needs at least one shard")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not _whole(seq_len) or seq_len < 1:
            raise ValueError(f"seq_len must be a whole number of tokens >= 1, got {seq_len!r}")
        self.world = World(rank, world_size)
        if window is not None and (not _whole(window) or window < 1):
            raise ValueError(f"window must be a whole number of documents >= 1 or None, got {window!r}")
        self.seq_len, self.mode, self.shuffle, self.seed = int(seq_len), mode, bool(shuffle), int(seed)
        self.index, self.drop_last, self.dtype, self._pad_id = index, bool(drop_last), dtype, pad_id
        if buffer_size is not None and (not _whole(buffer_size) or buffer_size < 1):
            raise ValueError(f"buffer_size must be a whole number of rows >= 1 or None, got {buffer_size!r}")
        self.window, self._cache_size = window, int(cache)
        self.buffer_size = buffer_size
        self._source: TokenSource | None = None
        self._unit_starts: np.ndarray | None = None  # units per shard, cumulated (aligned, padded)
        self._pieces: tuple[np.ndarray, ...] | None = None  # aligned: rows of pieces over all shards
        names = "\n".join(url.rsplit("/", 1)[-1] for url in self.urls)
        self.cursor = Cursor({"mode": self.mode, "seq_len": self.seq_len, "seed": self.seed, "shuffle": self.shuffle,
                              "buffer_size": buffer_size, "window": window, "drop_last": self.drop_last,
                              "shards": hashlib.sha1(names.encode()).hexdigest()[:16]}, self.drop_last)  # fmt: skip
        self._order: tuple[int, np.ndarray] | None = None
        self.stats = TokenStats()

    # -- sizes -----------------------------------------------------------------------------

    @property
    def source(self) -> TokenSource:
        """The shards' counts and the cache of opened shards (made on first use)."""
        if self._source is None:
            self._source = TokenSource(self.urls, self.index, self._cache_size)
        return self._source

    @property
    def meta(self) -> dict:
        """The dataset's metadata: ``vocab_size``, ``eod``, ``pad``, ``labels``... (from the index)."""
        return self.source.meta

    @property
    def pad_id(self) -> int:
        """The input token of padding."""
        if self._pad_id is not None:
            return int(self._pad_id)
        pad = self.meta.get("pad")
        return pad if isinstance(pad, int) else 0

    def units(self) -> int:
        """Units of an epoch over all ranks: rows (concat, aligned) or documents (padded)."""
        if self.mode == "concat":
            return concat_rows(int(self.source.tokens.sum()), self.seq_len)
        return int(self._starts()[-1])

    def _starts(self) -> np.ndarray:
        """Cumulated units per shard (aligned: rows, packed now; padded: documents)."""
        if self._unit_starts is None:
            if self.mode == "aligned":
                self._pack()
            else:
                self._unit_starts = np.concatenate([[0], np.cumsum(self.source.documents)]).astype(np.int64)
        return self._unit_starts

    def _pack(self) -> None:
        """Packs every shard's documents (NOTE [ Best fit decreasing and its waste ]); reads
        each shard's document offsets, not its tokens."""
        rows, shard, lo, length = [], [], [], []
        for s in range(len(self.urls)):
            packing = pack_documents(self.source.shard(s).docs, self.seq_len, self.window)
            rows.append(np.diff(packing.row_starts))
            shard.append(np.full(len(packing.lo), s, np.int64))
            lo.append(packing.lo)
            length.append(packing.length)
        per_row = np.concatenate(rows)
        row_starts = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
        self._pieces = (row_starts, np.concatenate(shard), np.concatenate(lo), np.concatenate(length))
        self._unit_starts = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)

    def _split(self, batch_size: int) -> Split:
        return Split.whole(self.cursor.epoch, self.units(), self.world()[1], batch_size, self.drop_last)

    def __len__(self) -> int:
        """Units (rows or documents) of this rank's epoch (torch's ``IterableDataset`` convention)."""
        return self._split(1).per_rank

    def num_batches(self, batch_size: int, num_workers: int = 2) -> int:
        """Batches of this rank's next epoch (the same on every rank, whatever ``num_workers``)."""
        del num_workers
        return self._split(int(batch_size)).batches

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next iteration runs (iterations otherwise count epochs themselves)."""
        self.cursor.set_epoch(epoch)

    # -- the order -----------------------------------------------------------------------

    def _unit_counts(self) -> np.ndarray:
        """Units per shard: documents (padded), packed rows (aligned), rows starting there (concat)."""
        if self.mode != "concat":
            return np.diff(self._starts())
        starts = np.arange(self.units(), dtype=np.int64) * self.seq_len
        return np.bincount(np.searchsorted(self.source.token_starts, starts, side="right") - 1,
                           minlength=len(self.urls)).astype(np.int64)  # fmt: skip

    def order(self, epoch: int) -> np.ndarray:
        """The units of ``epoch`` in its order (NOTE [ Token units in the epoch model ]).

        NOTE [ Token units in the epoch model ]
        The units (rows or documents) take the place of samples in the epoch model of
        ``fastdata.loading.order``: each belongs to the shard it starts in, the epoch's order
        permutes the shards and shuffles windows of whole shards holding at least
        ``buffer_size`` units (None: one window, every unit anywhere), and ranks take
        contiguous stretches of that order. So the order does not depend on the number of
        ranks or workers, a rank reads about ``1/world_size`` of the shards plus a window,
        and a state resumes on any cluster shape (NOTE [ Elastic resumption ]).
        """
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.unit_order(epoch, self.seed))
        return self._order[1]

    def unit_order(self, epoch: int, seed: int) -> np.ndarray:
        """The units of ``epoch`` in the order ``seed`` gives them (``order`` uses the
        dataset's seed; ``fastdata.Mix`` offsets it for a source's later passes)."""
        counts = self._unit_counts()
        window = int(counts.sum()) + 1 if self.buffer_size is None else self.buffer_size
        shard, member = epoch_order(counts, seed=seed, epoch=epoch, shuffle=self.shuffle, window=window)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return first[shard] + member

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The state after the last batch delivered (see the module docstring for the keys)."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Makes the next iteration continue exactly where ``state`` was taken, on this or any
        other number of ranks and workers.

        Raises:
            ValueError: the state was taken with another order (seed, mode, shards...).
        """
        self.cursor.load_state_dict(state)

    # -- iteration -------------------------------------------------------------------------

    def __fastdata_iter__(self, loader: Any) -> Iterator[dict]:
        """How ``fastdata.DataLoader`` iterates this dataset: ``iter_batches`` with its arguments."""
        return self.iter_batches(loader.batch_size, num_workers=loader.num_workers,
                                 device=getattr(loader, "device", None), timeout=loader.timeout,
                                 prefetch=loader.prefetch_factor or 2)  # fmt: skip

    def iter_batches(
        self,
        batch_size: int,
        *,
        num_workers: int = 2,
        device: torch.device | str | None = None,
        timeout: float = 0,
        prefetch: int = 2,
    ) -> Iterator[dict]:
        """One epoch of batches (dicts of tensors, see the module docstring).

        Args:
            batch_size: rows per batch.
            num_workers: 0 builds the batches in the calling thread; more, in one
                background thread, ``num_workers * prefetch`` batches ahead (NOTE [ One thread ]).
            device: where the batches go (None: stay on the CPU).
            timeout: seconds to wait for one batch before ``TimeoutError`` (0: no limit).
            prefetch: batches each thread prepares ahead.

        Raises:
            ValueError: a bad argument, or a loaded state taken with another batch size.
        """
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("prefetch", prefetch, 1)):
            if not _whole(value) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        bs = int(batch_size)
        rank, world = self.world()
        split, first = self.cursor.start(self.units(), bs, world)
        schedule = split.schedule(rank)
        units = self.order(split.epoch)[schedule.pos]
        return self._epoch_batches(split, units, schedule.starts, first, int(num_workers), device,
                                   float(timeout), int(prefetch))  # fmt: skip

    def _epoch_batches(self, split: Split, units: np.ndarray, starts: np.ndarray, first: int,
                       workers: int, device, timeout: float, prefetch: int) -> Iterator[dict]:  # fmt: skip
        stop, ahead_n = len(starts) - 1, max(1, workers * prefetch)
        build = lambda b: self._batch(units[starts[b] : starts[b + 1]])  # noqa: E731
        pool = ThreadPoolExecutor(1, thread_name_prefix="fastdata-tokens") if workers else None  # NOTE [ One thread ]
        ahead: deque = deque()
        submitted, clock = first, time.perf_counter()
        try:
            for b in range(first, stop):
                if pool is None:
                    batch = build(b)
                else:
                    while submitted < min(stop, b + ahead_n):
                        ahead.append(pool.submit(build, submitted))
                        submitted += 1
                    waited = time.perf_counter()
                    batch = ahead.popleft().result(timeout=timeout or None)
                    self.stats.wait_s += time.perf_counter() - waited
                self.cursor.delivered(split, b + 1, int(starts[b + 1]))
                self.stats.batches, self.stats.rows = self.stats.batches + 1, self.stats.rows + int(starts[b + 1] - starts[b])
                self.stats.tokens += batch.pop("_tokens")
                self.stats.elapsed_s += time.perf_counter() - clock
                yield batch if device is None else {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                clock = time.perf_counter()
            self.cursor.delivered(split, split.batches, len(units))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.source.clear()

    def _batch(self, units: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of the given units (rows or documents).

        NOTE [ One thread ]
        A batch of 32 rows of 1,024 tokens takes about 0.4 ms of one core: a few NumPy
        calls of index arithmetic (holding the GIL), one compiled copy per shard touched
        and one compiled pass that writes the five arrays. Split over two threads, the GIL
        handoffs doubled the CPU time per batch and made it slower, so ``num_workers > 0``
        means one background thread that stays ahead of the consumer, whatever the count.
        """
        b, t = len(units), self.seq_len
        window = np.empty((b, t + 1), np.int64)
        marks = np.zeros((b, t + 1), np.bool_)
        row, shard, lo, n, at, row_len = getattr(self, f"_{self.mode}_pieces")(units)
        self.source.gather(shard, row, lo, n, at, window, marks, self.mode != "concat")
        out = fill_rows(window, row_len, marks, cross_targets=self.mode == "concat", pad_id=self.pad_id)
        batch: dict[str, Any] = {k: torch.from_numpy(v) for k, v in out.items()}
        batch["_tokens"] = int(np.minimum(row_len, t).sum())  # for the stats; popped before delivery
        if self.mode == "padded":
            del batch["cu_seqlens"], batch["position_ids"]
            segment = batch.pop("segment_ids")
            batch["attention_mask"] = segment >= 0
            batch["lengths"] = torch.from_numpy(np.minimum(row_len, t))
            batch["labels"] = torch.from_numpy(self._labels(units))
        if self.dtype != torch.int64:
            for key in ("input_ids", "targets", "position_ids"):
                if key in batch:
                    batch[key] = batch[key].to(self.dtype)
        return batch

    def _concat_pieces(self, units: np.ndarray) -> tuple[np.ndarray, ...]:
        """Row ``r`` is ``stream[r*T : r*T + T + 1]``: its runs in each shard it spans."""
        t, starts = self.seq_len, self.source.token_starts
        a = units * t
        first = np.searchsorted(starts, a, side="right") - 1
        last = np.searchsorted(starts, a + t, side="right") - 1
        row, shard = _expand(first, last - first + 1)
        lo = np.maximum(a[row], starts[shard])
        hi = np.minimum(a[row] + t + 1, starts[shard + 1])
        keep = hi > lo
        row, shard, lo, hi = row[keep], shard[keep], lo[keep], hi[keep]
        return row, shard, lo - starts[shard], hi - lo, lo - a[row], np.full(len(units), t + 1, np.int64)

    def _aligned_pieces(self, units: np.ndarray) -> tuple[np.ndarray, ...]:
        """The pieces best fit decreasing put in each row, one after another."""
        row_starts, shard, lo, length = self._pieces  # type: ignore[misc]
        row, piece = _expand(row_starts[units], row_starts[units + 1] - row_starts[units])
        n = length[piece]
        row_len = np.bincount(row, weights=n, minlength=len(units)).astype(np.int64)
        at = np.cumsum(n) - n - np.repeat(np.cumsum(row_len) - row_len, np.diff(row_starts)[units])
        return row, shard[piece], lo[piece], n, at, row_len

    def _padded_pieces(self, units: np.ndarray) -> tuple[np.ndarray, ...]:
        """Document ``d`` truncated to ``T + 1`` tokens."""
        shard = np.searchsorted(self._starts(), units, side="right") - 1
        doc = units - self._starts()[shard]
        lo, n = np.empty(len(units), np.int64), np.empty(len(units), np.int64)
        for i, (s, d) in enumerate(zip(shard.tolist(), doc.tolist(), strict=True)):
            docs = self.source.shard(s).docs
            lo[i], n[i] = docs[d], min(docs[d + 1] - docs[d], self.seq_len + 1)
        return np.arange(len(units)), shard, lo, n, np.zeros(len(units), np.int64), n

    def _labels(self, units: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self._starts(), units, side="right") - 1
        out = np.full(len(units), -1, np.int64)
        for i, (s, d) in enumerate(zip(shard.tolist(), (units - self._starts()[shard]).tolist(), strict=True)):
            labels = self.source.shard(s).labels
            if labels is not None:
                out[i] = labels[d]
        return out

    def __iter__(self) -> Iterator[dict]:
        """Single rows for torch's DataLoader (workers split the batches by ``get_worker_info``)."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, _ = self.world()
        split = self._split(1)
        units = self.order(split.epoch)[split.schedule(rank).pos]
        for lo in range(worker * 64, len(units), workers * 64):
            batch = self._batch(units[lo : lo + 64])
            for i in range(len(batch["input_ids"])):
                yield {k: v[i] for k, v in batch.items() if k not in ("cu_seqlens", "_tokens")}


def _expand(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, value)`` pairs: row ``i`` repeated ``count[i]`` times with ``first[i], first[i] + 1, ...``."""
    row = np.repeat(np.arange(len(first), dtype=np.int64), count)
    step = np.arange(len(row), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    return row, np.repeat(first, count) + step


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
