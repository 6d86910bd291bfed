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
        checkpoint = {"data": data.state_dict(), ...}   # at any batch

With ``fastdata.DataLoader`` (or ``iter_batches``) there are two ways to make batches:

- the batch path (``fastdata.loading.batches``), used whenever the shards' sample counts are known
  (an index, or local shards): each shard is mapped (local) or read whole and its tar
  headers scanned once (``fastdata.shards.shardmap``), the rank's epoch is computed in advance as
  index arithmetic (``fastdata.loading.schedule``: shuffling by windows of whole shards), and worker
  threads build whole batches; raw ``.npy`` pixels go through one Numba kernel per batch
  that crops, pads, flips and normalises (``fastdata.transforms.stages.raw``), encoded images through the
  transform plan per sample, fed slices of the shard buffer;
- the streaming path (``fastdata.loading.stream`` and the batch engine ``fastdata.loading.engine``), for
  remote or ``pipe:`` shards without an index: reader threads per worker, a shuffle buffer,
  decoding in a thread pool into a ring of uint8 batches.

Given to torch's own ``DataLoader``, the dataset yields single samples (slowly, for
compatibility). Splitting and equal batches per rank are described in
``fastdata.loading.sampling``. Randomness (shard order, shuffle, augmentations) is a pure function
of ``(seed, epoch, rank, worker, position)`` on both paths, though the two paths draw it
differently (the same seed gives a different order and different crops on each).

State (``state_dict()``), all small integers: ``epoch``, ``batches`` and ``samples``
delivered this epoch, ``turn`` and ``limit`` (batches this epoch, None when unknown), plus
``seed``, ``rank``, ``world_size``, ``num_workers``, ``batch_size``, ``shuffle``,
``buffer_size``, ``drop_last`` and ``shards`` (a hash of the shard file names), checked on
load: a state from a run with another order is refused, not resumed into other data. On
the batch path that is all a resumed run needs (it recomputes the epoch's schedule and
skips the delivered batches); on the streaming path ``slots[w]`` adds, per worker,
``shard``, ``offset``, ``seen``, ``draws``, ``buffer`` (flat ``[shard_pos, offset, ...]`` of
the buffered samples) and ``done``.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

from fastdata.errors import DecodeError, FastdataError
from fastdata.loading.batches import BatchStream
from fastdata.loading.engine import ON_ERROR, BatchEngine, EngineStats, SampleRng
from fastdata.loading.fields import (
    IMAGE_FIELDS,
    collate_field,
    decode_field,
    decode_npy,
    field_kinds,
    sample_field,
)
from fastdata.loading.sampling import Draws, assign, rank_batches, shard_order, slot_count
from fastdata.loading.schedule import epoch_schedule
from fastdata.loading.stream import Failed, Producer, SlotStream, StreamSpec, fresh_slot, merge
from fastdata.loading.streamplan import StreamPlan, compile_plan
from fastdata.shards.index import find_index, read_index
from fastdata.shards.shardmap import load_shard
from fastdata.shards.tario import iter_samples
from fastdata.shards.urls import expand_urls, open_url

__all__ = ["ShardDataset", "IMAGE_FIELDS"]

_STATE_VERSION = 1
_OPTIONAL_KEYS = ("shuffle", "buffer_size", "drop_last", "shards")


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
        shuffle: shuffle the shard order and the samples (through a buffer) every epoch.
        buffer_size: samples in the shuffle buffer.
        seed: seeds shard order, buffer and augmentations.
        on_error: ``"raise"``, ``"skip"`` or ``"warn"`` for a bad sample or shard; skips
            are counted in ``stats`` and batches keep their size.
        rank: this process's rank; default from ``torch.distributed`` (0 without it).
        world_size: number of ranks; default from ``torch.distributed`` (1 without it).
        drop_last: drop each worker's last partial batch.
        index: path or URL of the shards' index (default: the one beside local shards).
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
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ValueError(f"give both rank and world_size with 0 <= rank < world_size, got {rank}, {world_size}")
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
        self._rank, self._world_size = rank, world_size
        self._counts: list[int] | None | bool = False  # False: not looked up yet
        self._scan_errors: dict[int, Exception] = {}  # shards counted by scanning that broke off
        self._sample_shape: tuple[int, int, int] | None = None
        self._epoch = 0
        self._resume: dict | None = None
        self._consumed: dict | None = None
        self.stats = EngineStats()

    # -- where this process stands -------------------------------------------------------

    def world(self) -> tuple[int, int]:
        """``(rank, world_size)``: as given, else from ``torch.distributed``, else ``(0, 1)``."""
        if self._world_size is not None:
            return self._rank, self._world_size
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def counts(self) -> list[int] | None:
        """Samples per shard, from the index (or by counting local shards when several ranks need them)."""
        if self._counts is False:
            self._counts = self._look_up_counts()
        return self._counts  # type: ignore[return-value]

    def _look_up_counts(self) -> list[int] | None:
        path = self.index or find_index(self.urls)
        if path is not None:
            shards = _remote_index(path) if "://" in path else read_index(path)["shards"]
            by_name = {s["name"]: int(s["count"]) for s in shards}
            names = [u.rsplit("/", 1)[-1] for u in self.urls]
            if all(n in by_name for n in names):
                return [by_name[n] for n in names]
        if self.world()[1] == 1:
            return None
        if any("://" in u or u.startswith("pipe:") for u in self.urls):
            raise FastdataError(
                "equal batches on every rank need each shard's sample count: these remote shards "
                "have no index; make one with `fastdata index SHARDS -o shards.index.json` (or "
                "write the shards with `fastdata convert`) and pass index=<its path or URL>"
            )
        warnings.warn("no index beside the shards: counting their samples (`fastdata index SHARDS` "
                      "writes one; fastdata.ShardWriter and `fastdata convert` do too)", stacklevel=3)
        return [sum(1 for _ in iter_samples([u], fields=set())) for u in self.urls]

    def __len__(self) -> int:
        """Samples of this rank's next epoch (torch's ``IterableDataset`` convention).

        Raises:
            TypeError: the sample counts are unknown (remote shards without an index); as
                for any ``IterableDataset`` without a length, ``len()`` is then undefined.
        """
        counts = self._known_counts()
        rank, world = self.world()
        order = shard_order(len(self.urls), seed=self.seed, epoch=self._epoch, shuffle=self.shuffle)
        return slot_count(assign(order, rank=rank, world_size=world, worker=0, num_workers=1), counts)

    def num_batches(self, batch_size: int, num_workers: int = 2) -> int:
        """Batches ``iter_batches(batch_size, num_workers=...)`` yields on this rank next epoch
        (the same on every rank: NOTE [ Equal batches per rank ]).

        Raises:
            TypeError: the sample counts are unknown (remote shards without an index).
        """
        counts = self._known_counts()
        order = shard_order(len(self.urls), seed=self.seed, epoch=self._epoch, shuffle=self.shuffle)
        return min(rank_batches(counts, order, world_size=self.world()[1], num_workers=max(1, int(num_workers)),
                                batch_size=int(batch_size), drop_last=self.drop_last))  # fmt: skip

    def _known_counts(self) -> list[int]:
        if not self._batch_path():
            raise TypeError(
                "len() of a ShardDataset needs each shard's sample count: these shards are remote "
                "and have no index; make one with `fastdata index SHARDS -o shards.index.json` "
                "and pass index=<its path or URL>"
            )
        return self.counts()  # type: ignore[return-value]

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next iteration runs (iterations otherwise count epochs themselves)."""
        self._epoch, self._resume = int(epoch), None

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The state after the last batch delivered (see the module docstring for the keys)."""
        state = self._resume or self._consumed
        if state is None:
            return {"epoch": self._epoch, "batches": 0, "samples": 0, "turn": 0, "limit": None, "slots": None}
        if state["limit"] is not None and state["batches"] >= state["limit"]:
            slots = state.get("slots")
            fresh = self._fresh(state["epoch"] + 1, len(slots)) if slots is not None else _fresh_batch(state["epoch"] + 1)
            state = {**state, **fresh, "limit": None}
        return json.loads(json.dumps(state))  # a deep, plain copy

    def load_state_dict(self, state: Mapping) -> None:
        """Makes the next iteration continue exactly where ``state`` was taken.

        Raises:
            ValueError: the state was taken with a different seed or rank layout.
        """
        if state.get("slots") is None and not state.get("batches"):
            self.set_epoch(state["epoch"])
            return
        mine = self._order_header()
        for key, value in mine.items():
            if key in _OPTIONAL_KEYS and key not in state:
                continue  # a state saved before the key was recorded
            if state.get(key) != value:
                what = "the shard list" if key == "shards" else f"{key}={state.get(key)!r}"
                now = "another" if key == "shards" else repr(value)
                raise ValueError(f"state_dict was taken with {what}, this run has {now}: resume "
                                 "with the dataset's arguments of the run that saved it")  # fmt: skip
        self._resume = dict(state)
        self._epoch = int(state["epoch"])

    def _order_header(self) -> dict:
        """What fixes the order of an epoch besides its number; checked on load."""
        rank, world = self.world()
        names = "\n".join(url.rsplit("/", 1)[-1] for url in self.urls)
        return {"version": _STATE_VERSION, "seed": self.seed, "rank": rank, "world_size": world,
                "shuffle": bool(self.shuffle), "buffer_size": self.buffer_size, "drop_last": bool(self.drop_last),
                "shards": hashlib.sha1(names.encode()).hexdigest()[:16]}  # fmt: skip

    def _fresh(self, epoch: int, workers: int) -> dict:
        return {"epoch": epoch, "batches": 0, "samples": 0, "turn": 0, "slots": [fresh_slot() for _ in range(workers)]}

    def _start_state(self, workers: int, batch_size: int, num_workers: int) -> dict:
        start = self._resume
        self._resume = None
        if start is not None:
            _check_layout(start, workers, batch_size, num_workers)
        else:
            start = self._fresh(self._epoch, workers)
        self._epoch = start["epoch"] + 1
        header = {**self._order_header(), "num_workers": workers, "batch_size": batch_size}
        return {**start, **header}

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
            num_workers: reader threads, one per worker slot, and decoding threads; 0
                does everything in the calling thread.
            device: where image batches go (converted and normalised there).
            memory_format: layout of the image batches.
            timeout: seconds to wait for one batch before ``RuntimeError`` (0: no limit).
            prefetch: batches each reader prepares ahead.
            stats: counters to add to (default ``self.stats``).
        """
        _check_iter_args(batch_size, num_workers, timeout, prefetch)
        if self.world()[1] > 1 and self.counts() is None:
            raise FastdataError("several ranks need the shards' sample counts")
        workers = max(1, int(num_workers))
        stats = stats if stats is not None else self.stats
        if self._batch_path():
            ahead = max(2, int(num_workers) * prefetch)
            return self._batch_epoch(workers, int(batch_size), int(num_workers), device, memory_format, timeout, ahead, stats)
        start = self._start_state(workers, int(batch_size), int(num_workers))
        engine = None
        if self.plan is not None:
            engine = BatchEngine(
                StreamPlan(self.plan, self._image_shape()), int(batch_size), num_threads=int(num_workers),
                seed=self.seed, ring_size=max(2, int(num_workers) * prefetch) + 1, device=device,
                memory_format=memory_format, on_error=self.on_error, timeout=timeout,
                collate_extras=self._collate, stats=stats,
            )  # fmt: skip
        return self._epoch_batches(start, engine, stats, int(num_workers) > 0, prefetch, timeout)

    def _epoch_batches(self, start: dict, engine, stats: EngineStats, threaded: bool, prefetch: int, timeout: float) -> Iterator:
        epoch, rank, world, workers, bs = (start[k] for k in ("epoch", "rank", "world_size", "num_workers", "batch_size"))
        order = shard_order(len(self.urls), seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        counts = self.counts()
        limit = None
        if counts is not None:
            limit = min(rank_batches(counts, order, world_size=world, num_workers=workers, batch_size=bs, drop_last=self.drop_last))
        start = {**start, "limit": limit}
        spec = self._spec(counts, stats)
        producers = [
            Producer(self._slot_batches(spec, order, start, w), threaded=threaded, prefetch=prefetch, name=f"rank {rank} worker {w}")
            for w in range(workers)
        ]
        states: deque[dict] = deque()

        def refs() -> Iterator:
            for batch, state in merge(producers, start, limit=limit, timeout=timeout, on_wait=_add_wait(stats)):
                states.append(state)
                yield batch

        if engine is not None:
            batches = engine.iterate(refs(), epoch=epoch, rank=rank, seed=self.seed)
        else:
            batches = map(self._fields_only(stats), refs())
        try:
            for images, extras in batches:
                self._consumed = states.popleft()
                if images is None:
                    yield extras
                else:
                    yield [images, *extras] if self.fields else images
            self._consumed = {**start, **self._fresh(epoch + 1, workers), "limit": None}
        finally:  # the engine's iteration first: it waits for its queued work
            if engine is not None:
                batches.close()
            for p in producers:
                p.close()
            if engine is not None:
                engine.close()

    def _batch_path(self) -> bool:
        """Whether epochs run on ``fastdata.loading.batches`` (shard counts known, or local shards to count)."""
        if self.counts() is not None:
            return True
        if any("://" in u or u.startswith("pipe:") for u in self.urls):
            return False
        counts, self._scan_errors = [], {}
        for i, url in enumerate(self.urls):  # one shard mapped at a time
            smap = load_shard(url)
            counts.append(smap.n)
            if smap.error is not None:
                self._scan_errors[i] = smap.error
        self._counts = counts
        return True

    def _batch_epoch(self, workers: int, bs: int, threads: int, device, memory_format, timeout: float, ahead: int,
                     stats: EngineStats) -> Iterator:  # fmt: skip
        """One epoch on the batch path; the state is ``(epoch, batches)`` (``fastdata.loading.schedule``)."""
        rank, world = self.world()
        start = self._resume or _fresh_batch(self._epoch)
        self._resume = None
        _check_layout(start, workers, bs, threads)
        epoch = int(start["epoch"])
        self._epoch = epoch + 1
        order = shard_order(len(self.urls), seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        schedule = epoch_schedule(self.counts(), order, seed=self.seed, epoch=epoch, rank=rank, world_size=world,
                                  num_workers=workers, batch_size=bs, drop_last=self.drop_last,
                                  shuffle=self.shuffle, buffer_size=self.buffer_size)  # fmt: skip
        header = {**self._order_header(), "num_workers": workers, "batch_size": bs, "limit": schedule.batches}
        stream = BatchStream(self, schedule, epoch=epoch, rank=rank, first=int(start["batches"]), num_workers=threads,
                             device=device, memory_format=memory_format, timeout=timeout, ahead=ahead, stats=stats)  # fmt: skip
        return self._batch_loop(stream, schedule, epoch, header)

    def _batch_loop(self, stream: Any, schedule: Any, epoch: int, header: dict) -> Iterator:
        for i in sorted(self._scan_errors):  # NOTE [ Bad shards without an index ]
            self._shard_error(stream.stats, self._scan_errors[i])
        started = time.perf_counter()
        for b, images, extras in stream:
            samples = int(schedule.starts[b + 1])
            self._consumed = {**header, "epoch": epoch, "batches": b + 1, "samples": samples}
            stream.stats.elapsed_s += time.perf_counter() - started
            if images is None:
                yield extras
            else:
                yield [images, *extras] if self.fields else images
            started = time.perf_counter()
        self._consumed = {**header, **_fresh_batch(epoch + 1), "limit": None}

    def _shard_error(self, stats: EngineStats, err: Exception) -> None:
        """A shard without an index broke off: raise, or count one skip.

        NOTE [ Bad shards without an index ]
        When no index gives the shards' sample counts, a shard that cannot be opened, is
        empty, is not a tar, or breaks off (truncation, a bad header, a sample's files not
        contiguous) has lost an unknown number of samples, so no placeholder can stand in
        for them (NOTE [ Bad shards keep the batch count ] in ``fastdata.loading.stream``).
        Every path then does what ``iter_samples`` does: under ``on_error="raise"`` the
        shard's ``ShardError`` ends the epoch, under "skip"/"warn" the samples read before
        the break are kept and the shard counts as one skipped item in ``stats`` (its URL
        in ``skipped_keys``). The batch path reports the shards its count found broken when
        the epoch starts; the streaming path when the reader reaches the break.
        """
        if self.on_error == "raise":
            raise err
        stats.skipped += 1
        if len(stats.skipped_keys) < 100:
            stats.skipped_keys.append(f"{getattr(err, 'url', None)}:{getattr(err, 'key', None)}")
        if self.on_error == "warn":
            warnings.warn(f"skipped the rest of a bad shard: {err}", stacklevel=3)

    def _spec(self, counts: list[int] | None, stats: EngineStats) -> StreamSpec:
        return StreamSpec(
            self.urls, counts, self._read_fields(), self._prepare, self.on_error,
            self.buffer_size if self.shuffle else 1, lambda err: self._shard_error(stats, err),
        )  # fmt: skip

    def _slot_batches(self, spec: StreamSpec, order: list[int], start: dict, w: int) -> Iterator:
        state = start["slots"][w]
        if state["done"]:
            return
        rank, world = start["rank"], start["world_size"]
        a = assign(order, rank=rank, world_size=world, worker=w, num_workers=start["num_workers"])
        slot = SlotStream(spec, a, Draws(self.seed, start["epoch"], rank, w), state)
        yield from slot.batches(start["batch_size"], self.drop_last)

    def __iter__(self) -> Iterator:
        """Single samples ``(image, *fields)`` for torch's DataLoader (workers split by ``get_worker_info``)."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.world()
        epoch = self._epoch
        order = shard_order(len(self.urls), seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        # Counts that a scan of index-less shards found short (a broken shard) would end the
        # stream at the break without reporting it: read such shards to their error instead.
        counts = self.counts() if world > 1 or not self._scan_errors else None
        spec = self._spec(counts, self.stats)
        a = assign(order, rank=rank, world_size=world, worker=worker, num_workers=workers)
        slot = SlotStream(spec, a, Draws(self.seed, epoch, rank, worker), fresh_slot())
        rngs = SampleRng(self.seed, epoch, rank, worker)
        plan = StreamPlan(self.plan, self._image_shape()) if self.plan is not None else None
        kinds = list(self.fields.values())
        for i, sample in enumerate(slot.shuffled()):
            src, extra, url, key, field = self._prepare(sample)
            if isinstance(src, Failed):
                if self.on_error == "raise":
                    raise src.error
                self.stats.skipped += 1
                continue
            extra = tuple(sample_field(kind, v, self.pad_value) for kind, v in zip(kinds, extra, strict=True))
            if plan is None:
                yield extra
                continue
            out = np.empty(plan.sample_shape, np.uint8)
            plan.sample_into(src, out, rngs.for_sample(i), url=url, key=key, field=field)
            image = plan.finish(torch.from_numpy(out)[None])[0]
            yield (image, *extra) if self.fields else image

    # -- samples -----------------------------------------------------------------------------

    def _read_fields(self) -> set[str]:
        return set(self.fields) | (set(self.image) if self.plan is not None else set())

    def _prepare(self, sample: Any) -> tuple:
        """A sample dict to ``(source, extra, url, key, field)``; failures become ``Failed``."""
        if isinstance(sample, Failed):
            err = sample.error
            return sample, None, getattr(err, "url", None), getattr(err, "key", None), None
        url, key, field = sample["__url__"], sample["__key__"], None
        try:
            src = None
            if self.plan is not None:
                field = next((ext for ext in self.image if ext in sample), self.image[0])
                src = self._image_source(sample, url, key, field)
            extra = tuple(self._field(sample, ext, kind, url, key) for ext, kind in self.fields.items())
            return src, extra, url, key, field
        except FastdataError as exc:
            return Failed(exc), None, url, key, getattr(exc, "field", field)

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

    def _field(self, sample: dict, ext: str, kind: str, url: str, key: str) -> Any:
        data = sample.get(ext)
        if data is None:
            raise DecodeError(url, key, ext, "missing field")
        return decode_field(kind, data, url=url, key=key, field=ext)

    def _collate(self, extras: list) -> list:
        return [
            collate_field(kind, ext, [e[i] for e in extras], self.pad_value)
            for i, (ext, kind) in enumerate(self.fields.items())
        ]

    def _fields_only(self, stats: EngineStats):
        """Batch function of datasets without images: the engine's skip policy on fields."""

        def batch(refs: list) -> tuple[None, list]:
            bad = [r.source for r in refs if isinstance(r.source, Failed)]
            if bad and self.on_error == "raise":
                raise bad[0].error
            good = [r.extra for r in refs if not isinstance(r.source, Failed)]
            if not good:
                first = bad[0].error
                raise DecodeError(getattr(first, "url", None), None, None,
                                  f"every sample of a batch failed; the first: {first}") from first  # fmt: skip
            for failed in bad:
                stats.skipped += 1
                if self.on_error == "warn":
                    warnings.warn(f"skipped a bad sample: {failed.error}", stacklevel=2)
            extras = [r.extra if r.extra is not None else good[i % len(good)] for i, r in enumerate(refs)]
            stats.batches, stats.samples = stats.batches + 1, stats.samples + len(refs)
            return None, self._collate(extras)

        return batch

    def _image_shape(self) -> tuple[int, int, int]:
        """The plan's declared sample shape, or (for size-keeping pipelines) the first image's."""
        if self._sample_shape is None:
            try:
                self._sample_shape = tuple(int(v) for v in self.plan.sample_shape)
            except FastdataError:
                first = next(iter_samples(self.urls[:1], fields=self._read_fields()))
                src = self._prepare(first)[0]
                if not isinstance(src, np.ndarray):
                    raise
                self._sample_shape = (*src.shape[:2], 3)
        return self._sample_shape


def _check_layout(start: dict, workers: int, batch_size: int, num_workers: int) -> None:
    """Rejects a resume whose worker count or batch size differs from the saving run's."""
    saved = (start.get("num_workers", workers), start.get("batch_size", batch_size))
    if saved != (workers, batch_size):
        raise ValueError(
            f"state_dict was taken with num_workers={saved[0]} and batch_size={saved[1]}, this "
            f"run has num_workers={num_workers} and batch_size={batch_size} (num_workers=0 "
            "reads like num_workers=1); resume with the same num_workers and batch_size"
        )
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


def _fresh_batch(epoch: int) -> dict:
    return {"epoch": epoch, "batches": 0, "samples": 0}


def _remote_index(url: str) -> list[dict]:
    with open_url(url) as f:
        index = json.load(f)
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise FastdataError(f"{url}: not a fastdata index (no list of shards)")
    return index["shards"]


def _add_wait(stats: EngineStats):
    def add(seconds: float) -> None:
        stats.wait_s += seconds

    return add
