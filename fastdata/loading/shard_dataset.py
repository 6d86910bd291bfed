"""``ShardDataset``: WebDataset shards streamed through the compiled transforms.

Usage::

    from fastdata import transforms as T
    pipeline = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                          T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    data = ShardDataset("out/train-{000000..000099}.tar", transform=pipeline,
                        shuffle=True, seed=0, on_error="skip")
    loader = fastdata.DataLoader(data, batch_size=256, num_workers=2)
    for epoch in range(epochs):
        for images, labels in loader:       # float NCHW batch, int64 labels
            ...
        checkpoint = {"data": loader.state_dict(), ...}   # at any batch

One way makes batches, for every shard source (local files, fsspec URLs, ``pipe:``): the
epoch's order is computed in advance from the shards' sample counts
(``fastdata.loading.order``: one order per epoch whatever the number of ranks and workers,
cut into one contiguous stretch per rank), and worker threads build whole batches from the
shards it names (``fastdata.loading.batches``: shards mapped or read whole and their tar
headers scanned once, raw ``.npy`` pixels through one Numba kernel per batch, encoded
images through the transform plan per sample). The counts come from the index beside
local shards (or from counting local shards once); remote shards need an index: pass
``index=PATH`` (``fastdata index SHARDS -o PATH`` writes one) or ``index="build"`` (read
every shard once and keep the index in the cache folder).

Given to torch's own ``DataLoader``, the dataset yields single samples of the same order
(slowly, for compatibility), torch's workers taking every ``num_workers``-th sample.

State (``state_dict()``), small plain values: ``epoch``, the split of the epoch in effect
(``intervals``, ``world_size``, ``batch_size``), ``batches`` delivered on each rank and
``samples`` delivered on this rank, plus ``seed``, ``shuffle``, ``buffer_size``,
``drop_last`` and ``shards`` (a hash of the shard file names), checked on load: a state
from a run with another order is refused, not resumed into other data. The state may be
loaded on any number of ranks and workers and with another batch size (NOTE [ Elastic
resumption ] in ``fastdata.loading.order``).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

from fastdata.errors import DecodeError, FastdataError
from fastdata.loading.batches import BatchStream, Rows
from fastdata.loading.buffers import batches_ahead
from fastdata.loading.engine import ON_ERROR, EngineStats
from fastdata.loading.fields import (
    IMAGE_FIELDS,
    decode_npy,
    field_kinds,
    sample_field,
)
from fastdata.loading.order import Cursor, Split, World, epoch_order
from fastdata.loading.planview import compile_plan
from fastdata.shards.index import find_index, read_index, write_index
from fastdata.shards.shardmap import load_shard
from fastdata.shards.urls import expand_urls, open_url

__all__ = ["ShardDataset", "IMAGE_FIELDS"]

_SAMPLE_CHUNK = 32  # samples a torch worker makes at once in __iter__


class ShardDataset(torch.utils.data.IterableDataset):
    """WebDataset shards as a stream of transformed batches (see the module docstring).

    Args:
        urls: shard paths or URLs (local, brace patterns, ``pipe:``, fsspec ``scheme://``).
        transform: a ``fastdata.transforms`` pipeline (or its ``plan()``), a torchvision
            pipeline that ``fastdata.transforms.from_torchvision`` translates, or None for
            samples without an image.
        image: the image field's extensions, the first present is used; ``.npy`` holds
            HWC (or CHW) uint8 pixels.
        fields: the other fields to deliver after the image, as a list of extensions
            (kinds by extension) or ``{ext: kind}`` (see ``fastdata.loading.fields``).
        shuffle: shuffle the shard order and the samples (in windows of whole shards of
            at least ``buffer_size`` samples) every epoch.
        buffer_size: samples of a shuffle window.
        seed: seeds shard order, shuffle and augmentations.
        on_error: ``"raise"``, ``"skip"`` or ``"warn"`` for a bad sample or shard; skips
            are counted in ``stats`` and batches keep their size.
        rank: this process's rank; default from ``torch.distributed`` (0 without it).
        world_size: number of ranks; default from ``torch.distributed`` (1 without it).
        drop_last: every rank gets only full batches (the rest of the epoch is dropped);
            otherwise every sample comes once, a few repeated to even the ranks out
            (NOTE [ Equal batches per rank ] in ``fastdata.loading.order``).
        index: path or URL of the shards' index (default: the one beside local shards), or
            ``"build"`` to read every shard once and cache the index it makes.
        pad_value: pad value of ``tokens`` fields.

    Raises:
        ValueError: no shards, an unknown ``on_error``, or a bad rank.
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        transform: Any = None,
        *,
        image: str | Sequence[str] = IMAGE_FIELDS,
        fields: Sequence[str] | Mapping[str, str] = ("cls",),
        shuffle: bool = False,
        buffer_size: int = 1000,
        seed: int = 0,
        on_error: str = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        index: str | None = None,
        pad_value: int = 0,
    ) -> None:
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError("ShardDataset needs at least one shard")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.world = World(rank, world_size)
        self.plan = compile_plan(transform) if transform is not None else None
        self.image = (image,) if isinstance(image, str) else tuple(image)
        self.fields = field_kinds(fields)
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, numbers.Integral) or buffer_size < 0:
            raise ValueError(f"buffer_size must be a whole number of samples >= 0, got {buffer_size!r}")
        if shuffle and buffer_size < 2:
            raise ValueError(
                f"shuffle=True needs buffer_size >= 2 (samples to shuffle among), got {buffer_size}; "
                "use shuffle=False for the shards' order"
            )
        self.shuffle, self.buffer_size, self.seed = bool(shuffle), int(buffer_size), int(seed)
        self.on_error, self.drop_last, self.pad_value = on_error, bool(drop_last), int(pad_value)
        self.index = index
        self._counts: list[int] | None = None
        self._scan_errors: dict[int, Exception] = {}  # shards counted by scanning that broke off
        self._sample_shape: tuple[int, int, int] | None = None
        self._order_cache: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        names = "\n".join(url.rsplit("/", 1)[-1] for url in self.urls)
        self.cursor = Cursor({"seed": self.seed, "shuffle": self.shuffle, "buffer_size": self.buffer_size,
                              "drop_last": self.drop_last, "shards": hashlib.sha1(names.encode()).hexdigest()[:16]},
                             self.drop_last)  # fmt: skip
        self.stats = EngineStats()

    # -- where this process stands -------------------------------------------------------

    def counts(self) -> list[int]:
        """Samples per shard: from the index, or by counting local shards once.

        Raises:
            FastdataError: remote shards without an index (the message says how to make one).
        """
        if self._counts is None:
            self._counts = self._look_up_counts()
        return self._counts

    def _look_up_counts(self) -> list[int]:
        path = self._built_index() if self.index == "build" else self.index or find_index(self.urls)
        if path is not None:
            shards = _remote_index(path) if "://" in path else read_index(path)["shards"]
            by_name = {s["name"]: int(s["count"]) for s in shards}
            names = [u.rsplit("/", 1)[-1] for u in self.urls]
            missing = [n for n in names if n not in by_name]
            if not missing:
                return [by_name[n] for n in names]
            if self.index is not None:
                raise FastdataError(f"{path}: the index does not list the shard {missing[0]!r} "
                                    f"({len(missing)} of {len(names)} missing); make it again with "
                                    "`fastdata index SHARDS -o PATH`")  # fmt: skip
        if any("://" in u or u.startswith("pipe:") for u in self.urls):
            raise FastdataError(
                "the epoch's order needs each shard's sample count, and these remote shards have "
                "no index: make one with `fastdata index SHARDS -o shards.index.json` and pass "
                "index=<its path or URL>, or pass index=\"build\" to read every shard once now and "
                "keep the index in the cache folder"
            )
        counts, self._scan_errors = [], {}
        for i, url in enumerate(self.urls):  # one shard mapped at a time
            smap = load_shard(url)
            counts.append(smap.n)
            if smap.error is not None:
                self._scan_errors[i] = smap.error
        return counts

    def _built_index(self) -> str:
        """The index made by reading every shard once, kept in the cache folder.

        NOTE [ Built indexes ]
        ``index="build"`` is the user's consent to read every shard once before the first
        epoch. The index is kept under ``$FASTDATA_CACHE`` (default
        ``~/.cache/fastdata``)/``indexes``, named by a hash of the shard URLs, and reused
        by later runs; delete it when the shards change.
        """
        from fastdata.shards.indexing import build_index

        root = os.environ.get("FASTDATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastdata")
        digest = hashlib.sha1("\n".join(self.urls).encode()).hexdigest()[:20]
        path = os.path.join(root, "indexes", f"{digest}.index.json")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_index(path, build_index(self.urls))
        return path

    def _size(self) -> int:
        return int(sum(self.counts()))

    def _split(self, batch_size: int, world: int) -> Split:
        return Split.whole(self.cursor.epoch, self._size(), world, batch_size, self.drop_last)

    def __len__(self) -> int:
        """Samples of this rank's next epoch (torch's ``IterableDataset`` convention)."""
        return self._split(1, self.world()[1]).per_rank

    def num_batches(self, batch_size: int, num_workers: int = 2) -> int:
        """Batches ``iter_batches(batch_size)`` yields on this rank next epoch (the same on
        every rank, whatever ``num_workers``: NOTE [ Equal batches per rank ])."""
        del num_workers  # workers do not change the epoch
        return self._split(int(batch_size), self.world()[1]).batches

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next iteration runs (iterations otherwise count epochs themselves)."""
        self.cursor.set_epoch(epoch)

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(shard, member)`` of every sample of ``epoch`` in its order (``fastdata.loading.order``)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = epoch_order(self.counts(), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                window=self.buffer_size)  # fmt: skip
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The state after the last batch delivered (see the module docstring for the keys)."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Makes the next iteration continue exactly where ``state`` was taken, on this or
        any other number of ranks and workers.

        Raises:
            ValueError: the state was taken with another seed, shard list or order.
        """
        self.cursor.load_state_dict(state)

    # -- iteration -------------------------------------------------------------------------

    def __fastdata_iter__(self, loader: Any) -> Iterator:
        """How ``fastdata.DataLoader`` iterates this dataset: ``iter_batches`` with its arguments."""
        return self.iter_batches(
            loader.batch_size, num_workers=loader.num_workers, device=getattr(loader, "device", None),
            memory_format=getattr(loader, "memory_format", torch.contiguous_format),
            timeout=loader.timeout, prefetch=loader.prefetch_factor or 2,
            stats=getattr(loader, "stats", None),
        )  # fmt: skip

    def iter_batches(
        self,
        batch_size: int,
        *,
        num_workers: int = 2,
        device: torch.device | str | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        timeout: float = 0,
        prefetch: int = 2,
        stats: EngineStats | None = None,
    ) -> Iterator:
        """One epoch of batches: ``[images, *fields]`` (``images`` alone without fields).

        Args:
            batch_size: samples per batch.
            num_workers: threads making batches; 0 does everything in the calling thread.
                They do not change the order or the batches.
            device: where image batches go (converted and normalised there).
            memory_format: layout of the image batches.
            timeout: seconds to wait for one batch before ``RuntimeError`` (0: no limit).
            prefetch: batches each thread prepares ahead.
            stats: counters to add to (default ``self.stats``).
        """
        _check_iter_args(batch_size, num_workers, timeout, prefetch)
        stats = stats if stats is not None else self.stats
        rank, world = self.world()
        split, done = self.cursor.start(self._size(), int(batch_size), world)
        rows = self._rows(split, rank)
        ahead = batches_ahead(int(num_workers), prefetch, self._batch_bytes(int(batch_size)))
        stream = BatchStream(self, rows, epoch=split.epoch, first=done, num_workers=int(num_workers), device=device,
                             memory_format=memory_format, timeout=timeout, ahead=ahead, stats=stats)  # fmt: skip
        return self._batch_loop(stream, split, rows)

    def _batch_bytes(self, batch_size: int) -> int:
        """Bytes of one image batch as the pipeline declares it (0: no images)."""
        if self.plan is None:
            return 0
        itemsize = torch.empty(0, dtype=getattr(self.plan, "dtype", torch.uint8)).element_size()
        return batch_size * int(np.prod(self._image_shape())) * itemsize

    def _rows(self, split: Split, rank: int) -> Rows:
        schedule = split.schedule(rank)
        shard, member = self.order(split.epoch)
        return Rows(shard[schedule.pos], member[schedule.pos], schedule.pos, schedule.starts)

    def _batch_loop(self, stream: BatchStream, split: Split, rows: Rows) -> Iterator:
        for i in sorted(self._scan_errors):  # NOTE [ Bad shards without an index ]
            self._shard_error(stream.stats, self._scan_errors[i])
        started = time.perf_counter()
        for b, images, extras in stream:
            self.cursor.delivered(split, b + 1, int(rows.starts[b + 1]))
            stream.stats.elapsed_s += time.perf_counter() - started
            if images is None:
                yield extras
            else:
                yield [images, *extras] if self.fields else images
            started = time.perf_counter()
        self.cursor.delivered(split, split.batches, len(rows.pos))

    def _shard_error(self, stats: EngineStats, err: Exception) -> None:
        """A shard without an index broke off: raise, or count one skip.

        NOTE [ Bad shards without an index ]
        When no index gives the shards' sample counts, a shard that cannot be opened, is
        empty, is not a tar, or breaks off (truncation, a bad header, a sample's files not
        contiguous) has lost an unknown number of samples, so no placeholder can stand in
        for them. Under ``on_error="raise"`` the shard's ``ShardError`` ends the epoch when
        it starts; under "skip"/"warn" the samples read before the break are kept and the
        shard counts as one skipped item in ``stats`` (its URL in ``skipped_keys``).
        """
        if self.on_error == "raise":
            raise err
        stats.skipped += 1
        if len(stats.skipped_keys) < 100:
            stats.skipped_keys.append(f"{getattr(err, 'url', None)}:{getattr(err, 'key', None)}")
        if self.on_error == "warn":
            warnings.warn(f"skipped the rest of a bad shard: {err}", stacklevel=3)

    def __iter__(self) -> Iterator:
        """Single samples ``(image, *fields)`` for torch's DataLoader: the rank's share of the
        epoch, torch's worker ``w`` of ``K`` taking every ``K``-th sample from the ``w``-th."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.world()
        split = self._split(1, world)
        rows = self._rows(split, rank)
        pos = rows.pos[worker::workers]
        shard, member = rows.shard[worker::workers], rows.member[worker::workers]
        starts = np.unique(np.minimum(np.arange(0, len(pos) + _SAMPLE_CHUNK, _SAMPLE_CHUNK), len(pos)))
        mine = Rows(shard, member, pos, starts if len(pos) else np.zeros(1, np.int64))
        stream = BatchStream(self, mine, epoch=split.epoch, first=0, num_workers=0, device=None,
                             memory_format=torch.contiguous_format, timeout=0, ahead=1, stats=self.stats,
                             collate=False)  # fmt: skip
        kinds = list(self.fields.values())
        if worker == 0:
            for i in sorted(self._scan_errors):
                self._shard_error(self.stats, self._scan_errors[i])
        for _, images, extras in stream:
            n = len(images) if images is not None else len(extras[0])
            for i in range(n):
                extra = tuple(sample_field(kind, e[i], self.pad_value) for kind, e in zip(kinds, extras, strict=True))
                if images is None:
                    yield extra
                else:
                    yield (images[i], *extra) if self.fields else images[i]

    # -- samples -----------------------------------------------------------------------------

    def _image_source(self, sample: dict, url: str, key: str, field: str) -> Any:
        if field not in sample:
            have = sorted(k for k in sample if not k.startswith("__"))
            raise DecodeError(url, key, field, f"no image field among {self.image} (the sample has {have})")
        data = sample[field]
        if not field.endswith("npy"):
            return data
        try:
            arr = decode_npy(data)
        except ValueError as exc:
            raise DecodeError(url, key, field, f"cannot read pixels: {exc}") from exc
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC view
        return arr

    def _image_shape(self) -> tuple[int, int, int]:
        """The plan's declared sample shape, or (for size-keeping pipelines) the first image's."""
        if self._sample_shape is None:
            try:
                self._sample_shape = tuple(int(v) for v in self.plan.sample_shape)
            except FastdataError:
                smap = load_shard(self.urls[0])
                field = next((e for e in self.image if smap.view(e, 0) is not None), None)
                src = None
                if field is not None:
                    src = self._image_source({field: smap.view(field, 0)}, smap.url, smap.key(0), field)
                if not isinstance(src, np.ndarray):
                    raise
                self._sample_shape = (*src.shape[:2], 3)
        return self._sample_shape


def _check_iter_args(batch_size: Any, num_workers: Any, timeout: Any, prefetch: Any) -> None:
    """The front door of ``iter_batches``: each argument's type and range, named when wrong."""

    def whole(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not whole(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of samples >= 1, got {batch_size!r}")
    if not whole(num_workers) or num_workers < 0:
        raise ValueError(
            f"num_workers must be 0 (everything in the calling thread) or more, got {num_workers!r}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout >= 0:
        raise ValueError(f"timeout must be seconds >= 0 (0: no limit), got {timeout!r}")
    if not whole(prefetch) or prefetch < 1:
        raise ValueError(f"prefetch must be a whole number of batches >= 1, got {prefetch!r}")


def _remote_index(url: str) -> list[dict]:
    with open_url(url) as f:
        index = json.load(f)
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise FastdataError(f"{url}: not a fastdata index (no list of shards)")
    return index["shards"]

