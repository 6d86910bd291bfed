"""The batch path of ``ShardDataset``: whole shards in memory, batches made by index arithmetic.

``BatchStream(dataset, rows, ...)`` yields one epoch's ``(images, extras)`` from ``Rows``
(which shard and sample each position of the rank's stream reads, computed from the
epoch's order by ``fastdata.loading.order``). A pool of ``num_workers`` threads makes whole batches,
at most ``ahead`` in flight; each batch job:

1. takes the shards its samples live in from a shared cache (``fastdata.shards.shardmap``: mapped
   or read, and scanned once, dropped after the last batch that reads them);
2. writes the images: raw ``.npy`` pixels of the shard's common shape go through one
   Numba kernel per batch (``fastdata.transforms.stages.raw``) when the pipeline is an index map, other
   images (JPEG, PNG, odd shapes) through ``plan.sample_into`` per sample, from
   ``memoryview`` slices of the shard, with the per-sample generator of the engine;
3. decodes the other fields (``.cls`` integers by a kernel, the rest per sample);
4. replaces failed samples by the next good one of the batch (NOTE [ Skipping bad
   samples ] in ``fastdata.loading.engine``).

On the CPU the kernels write the final float batch directly; with a ``device`` they
write a uint8 NHWC batch of a ``fastdata.loading.buffers.BatchRing`` and the consumer's thread
calls ``plan.finish`` (non-blocking copy, conversion on the device). Every wait polls
with the timeout; a job's exception reaches the consumer with its traceback.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numba import njit

from fastdata.errors import DecodeError, FastdataError, ShardError
from fastdata.loading.buffers import BatchRing, OutputPool
from fastdata.loading.engine import BATCH_STREAM, PIXEL_STREAM, EngineStats, SampleRng
from fastdata.loading.fields import collate_field, decode_field
from fastdata.loading.planview import PlanView
from fastdata.shards.shardmap import ShardMap, load_shard
from fastdata.transforms.stages.raw import (
    affine_table,
    convert_into,
    crop_spec,
    draw_params,
    gather_into,
    param_key,
)

__all__ = ["BatchStream", "Rows"]

_POLL_S = 1.0


@dataclass(frozen=True)
class Rows:
    """One rank's stream of samples, cut into batches.

    Attributes:
        shard: int64 shard index (into the dataset's URL list) per stream position.
        member: int64 sample number within that shard per position.
        pos: int64 key of each position's randomness: its place in the epoch's order, the
            same on every topology (NOTE [ One order, split by ranges ]).
        starts: int64 batch boundaries: batch ``b`` is positions ``starts[b]:starts[b + 1]``.
    """

    shard: np.ndarray
    member: np.ndarray
    pos: np.ndarray
    starts: np.ndarray

    @property
    def batches(self) -> int:
        """Number of batches."""
        return len(self.starts) - 1


class _Cache:
    """Shards in memory, loaded once by whichever job needs them first.

    NOTE [ Shards in memory ]
    A mapped shard counts in the process's resident memory (tens of MB each). ``uses``
    says how many batch jobs of the epoch read each shard; a job releases the shards it
    read when it ends, and the last one drops the map. The shard is then unmapped as soon
    as no job needs it, not when the consumer takes its last batch, which may be several
    batches later.
    """

    def __init__(self, urls: list[str], uses: np.ndarray) -> None:
        self.urls, self.maps, self.locks = urls, {}, {}
        self.uses = uses.tolist()
        self._lock = threading.Lock()

    def get(self, shard: int) -> ShardMap:
        with self._lock:
            lock = self.locks.setdefault(shard, threading.Lock())
        with lock:
            if shard not in self.maps:
                self.maps[shard] = load_shard(self.urls[shard])
            return self.maps[shard]

    def release(self, shard: int) -> None:
        with self._lock:
            self.uses[shard] -= 1
            if self.uses[shard] <= 0:
                self.maps.pop(shard, None)


class BatchStream:
    """One epoch of batches for a ``ShardDataset`` (see the module docstring).

    Args:
        ds: the dataset (its plan, fields, image extensions, error policy, seed).
        schedule: the rank's epoch (``Rows``).
        epoch: mixed into the randomness, with each sample's ``Rows.pos``.
        first: the first batch to make (resumption).
        num_workers: batch threads (0: in the consumer's thread).
        device, memory_format: where and how the images go.
        timeout: seconds to wait for one batch (0: no limit).
        ahead: batches in flight.
        stats: counters to add to.
        collate: collate the fields of a batch (else a list of values per field).
    """

    def __init__(self, ds: Any, schedule: Rows, *, epoch: int, first: int, num_workers: int,
                 device: Any, memory_format: torch.memory_format, timeout: float, ahead: int,
                 stats: EngineStats, collate: bool = True) -> None:  # fmt: skip
        self.ds, self.s, self.first, self.collate = ds, schedule, first, collate
        self.workers, self.timeout, self.ahead = num_workers, timeout, max(1, ahead)
        self.stats = stats
        self.device = torch.device(device) if device is not None else None
        self.memory_format = memory_format
        self.plan = ds.plan
        self.cache = _Cache(ds.urls, _uses(schedule, first, len(ds.urls)))
        self.rngs = SampleRng(ds.seed, epoch, 0, 0)
        self.key = param_key(ds.seed, epoch, 0)
        self.direct = (
            self.plan is not None and self.device is None and self.plan.dtype != torch.uint8
        )
        self.nchw = memory_format != torch.channels_last
        self._layouts: dict[tuple[int, str], Any] = {}
        self._local = threading.local()
        self._ring: BatchRing | None = None
        self._outputs = _output_pool(ds, self.ahead + 2, memory_format)
        self._cap = ds_batch(schedule)
        if self.plan is not None:
            shape = tuple(int(v) for v in ds._image_shape())
            self.shape = shape
            if self.direct:  # NOTE [ Output reuse ]: what is in flight, and the consumer's
                self._outputs.reserve(self.ahead + 1, self._cap, self._new_output)
            pin = (
                self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
            )
            if not self.direct:
                self._ring = BatchRing(self.ahead + 1, self._cap, shape, pin, False)
            self.lut = self.plan.lut(torch.device("cpu")).numpy() if self.direct else _IDENTITY
            self.affine = (
                affine_table(self.lut, self.plan.mean, self.plan.std, self.plan.scale)
                if self.direct
                else None
            )

    # -- the consumer's side ----------------------------------------------------------------

    def __iter__(self):
        pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="fastdata-batch")
            if self.workers
            else None
        )
        inflight: deque[tuple[int, Future, Any, Any]] = deque()
        nxt = self.first
        clean = False
        try:
            while inflight or nxt < self.s.batches:
                while nxt < self.s.batches and len(inflight) < self.ahead:
                    inflight.append(self._submit(pool, nxt))
                    nxt += 1
                b, fut, out, slot = inflight.popleft()
                t0 = time.perf_counter()
                images, extras = self._wait(fut)
                if not self.direct and self.plan is not None:
                    images = self._finish(slot, len(extras[0]) if extras else None, b)
                if getattr(self.plan, "has_batch_augment", False):  # RandomErasing
                    lo = int(self.s.starts[b])
                    self.plan.augment_batch(images, lambda i, lo=lo, pos=self.s.pos: self.rngs.for_sample(int(pos[lo + i]), BATCH_STREAM))
                self.stats.wait_s += time.perf_counter() - t0
                n = int(self.s.starts[b + 1] - self.s.starts[b])
                self.stats.batches += 1
                self.stats.samples += n
                yield b, images, extras
            clean = True
        except GeneratorExit:  # the consumer stopped early: no job is stuck
            clean = True
            raise
        finally:
            for _, fut, _, _ in inflight:
                fut.cancel()
            if pool is not None:  # after an error (a timeout) a stuck job is not waited for
                pool.shutdown(wait=clean, cancel_futures=True)

    def _submit(self, pool, b: int) -> tuple[int, Future, Any, Any]:
        n = int(self.s.starts[b + 1] - self.s.starts[b])
        out = slot = None
        if self.direct:  # NOTE [ Output reuse ]: pooled batches of the largest size, sliced
            out = self._outputs.batch(n, self._cap, self._new_output)
        elif self._ring is not None:
            slot = self._ring.take(n)
            out = self._ring.tensors[slot]
        if pool is None:
            fut: Future = Future()
            fut.set_result(self._job(b, out))
        else:
            fut = pool.submit(self._job, b, out)
        return b, fut, (out if self.direct else None), slot

    def _new_output(self) -> torch.Tensor:
        shape = (self._cap, 3, *self.shape[:2])
        return torch.empty(shape, dtype=self.plan.dtype, memory_format=self.memory_format)

    def _wait(self, fut: Future):
        start = time.perf_counter()
        while True:
            done, _ = wait([fut], timeout=_POLL_S, return_when=FIRST_EXCEPTION)
            if done:
                return fut.result(timeout=0)
            if self.timeout > 0 and time.perf_counter() - start > self.timeout:
                raise RuntimeError(
                    f"DataLoader timed out after {self.timeout} seconds waiting for a batch"
                )

    def _finish(self, slot: int, n: int | None, b: int):
        n = int(self.s.starts[b + 1] - self.s.starts[b])
        buf = self._ring.tensors[slot]
        on_cuda = self.device is not None and self.device.type == "cuda"
        try:
            images = self.plan.finish(buf[:n], device=self.device, memory_format=self.memory_format)
            if images.data_ptr() == buf.data_ptr():
                images = images.clone()
        finally:
            self._ring.give_back(slot, on_cuda)
        return images

    # -- a batch job (worker thread) ---------------------------------------------------------

    def _job(self, b: int, out: Any) -> tuple[Any, list]:
        lo, hi = int(self.s.starts[b]), int(self.s.starts[b + 1])
        shard, member = self.s.shard[lo:hi], self.s.member[lo:hi]
        maps: dict[int, ShardMap] = {}
        try:
            for s in np.unique(shard).tolist():
                maps[s] = self.cache.get(s)
            return self._fill(lo, shard, member, maps, out)
        finally:  # NOTE [ Shards in memory ]
            for s in maps:
                self.cache.release(s)

    def _fill(self, lo: int, shard, member, maps: dict, out: Any, refill: bool = True) -> tuple[Any, list]:
        errors: dict[int, Exception] = {}
        for s, smap in maps.items():
            rows = np.flatnonzero(shard == s)
            for r in rows[member[rows] >= smap.n]:
                errors[int(r)] = smap.error or ShardError(
                    smap.url, f"holds {smap.n} samples, fewer than its index says"
                )
        if self.plan is not None:
            self._images(lo, shard, member, maps, out, errors)
        extras = [
            self._field(ext, kind, shard, member, maps, errors)
            for ext, kind in self.ds.fields.items()
        ]
        if errors and len(errors) == len(shard) and refill and self.ds.on_error != "raise":
            return self._fill_from_donors(lo, shard, member, maps, out, errors)
        if errors:
            self._replace(errors, shard, member, maps, out, extras)
        kinds = list(self.ds.fields.items())
        if not self.collate:  # single samples (torch's DataLoader): one value per row
            return (out if self.direct else None), extras
        extras = [v if isinstance(v, torch.Tensor) else collate_field(kind, ext, v, self.ds.pad_value)
                  for v, (ext, kind) in zip(extras, kinds, strict=True)]  # fmt: skip
        return (out if self.direct else None), extras

    def _fill_from_donors(self, lo: int, shard, member, maps: dict, out: Any, errors: dict) -> tuple[Any, list]:
        """Fills a batch none of whose samples can be read with good samples from elsewhere
        in the epoch.

        NOTE [ A batch with no good sample ]
        Skipping replaces a bad sample by a good one of the same batch. Without shuffling,
        the samples a truncated shard lost (its index still counts them) fill whole batches,
        which have no good sample to copy. Such a batch takes the next readable samples of
        the rank's epoch in schedule order (wrapping around): the choice depends only on
        the schedule, so it is the same on every run and on resumption. Every lost sample
        is counted as skipped. Only when no sample of the whole epoch can be read does the
        batch fail, with an error naming the shards.
        """
        for r in sorted(errors):
            self._skipped(errors[r], maps.get(int(shard[r])), int(member[r]))
        n, hi, total = len(shard), lo + len(shard), len(self.s.shard)
        donors: dict[int, ShardMap] = {}
        picks: list[tuple[int, int]] = []
        for j in [*range(hi, total), *range(0, lo)]:
            s, m = int(self.s.shard[j]), int(self.s.member[j])
            if s not in donors:
                donors[s] = load_shard(self.ds.urls[s])
            if m < donors[s].n:
                picks.append((s, m))
                if len(picks) == n:
                    break
        if not picks:
            urls = sorted({self.ds.urls[int(s)] for s in np.unique(shard)})
            raise ShardError(
                ", ".join(urls), f"no sample of this epoch can be read to fill a batch of {n}"
                " (on_error skips bad samples but needs good ones); check the shards with"
                " `fastdata verify`",
            ) from errors[min(errors)]
        picks = [picks[i % len(picks)] for i in range(n)]
        d_shard = np.array([p[0] for p in picks], np.int64)
        d_member = np.array([p[1] for p in picks], np.int64)
        return self._fill(lo, d_shard, d_member, donors, out, refill=False)

    def _images(self, lo: int, shard, member, maps: dict, out, errors: dict) -> None:
        target = out.permute(0, 2, 3, 1) if (self.direct and not self.nchw) else out
        arr = target.numpy() if self.direct else out.numpy()
        slow: list[int] = []
        for s, smap in maps.items():
            rows = np.flatnonzero((shard == s) & (member < smap.n))
            if errors:
                rows = rows[~np.isin(rows, np.fromiter(errors, np.int64, len(errors)))]
            if len(rows) == 0:
                continue
            ext, fast = self._fast_rows(s, smap, member[rows])
            if fast is not None and fast.any():
                layout = self._layouts[(s, ext)]
                sel = rows[fast]
                offsets = smap.fields[ext][0][member[sel]] + layout[0]
                params = draw_params(layout[4], self.key, self.s.pos[lo + sel])
                gather_into(smap.data, offsets, layout[3], layout[1], layout[2], params, layout[4].fill, self.lut, arr,
                            self.nchw and self.direct, self.affine, sel)  # fmt: skip
                rows = rows[~fast]
            slow += [int(r) for r in rows]
        self._per_sample(lo, slow, shard, member, maps, arr, errors)

    def _fast_rows(self, s: int, smap: ShardMap, members: np.ndarray):
        """The image extension of these samples and which of them the batch kernel can take."""
        ext = next((e for e in self.ds.image if e in smap.fields), None)
        if ext is None or not ext.endswith("npy") or getattr(self.plan, "has_pixel_stage", False):
            return ext, None  # the gather kernel has no pixel stage: per sample instead
        if (s, ext) not in self._layouts:
            self._layouts[(s, ext)] = _npy_layout(smap, ext, self.plan.sample_ops, self.shape)
        layout = self._layouts[(s, ext)]
        if layout is None:
            return ext, None
        offsets, sizes = smap.fields[ext]
        same = _same_header(smap.data, offsets[members], sizes[members], layout[5], layout[6])
        return ext, same

    def _per_sample(self, lo: int, rows: list[int], shard, member, maps, arr, errors: dict) -> None:
        if not rows:
            return
        plan = PlanView(self.plan, self.shape)
        staged = getattr(self.plan, "has_batch_stage", False)
        tmp = self._scratch(len(rows)) if self.direct or staged else None
        done = []
        todo = range(len(rows))
        if staged:  # NOTE [ Batch-level stage ] in fastdata.loading.engine
            ok = self._stage(lo, rows, shard, member, maps, tmp)
            done = [k for k in todo if ok[k]]
            if getattr(self.plan, "has_pixel_stage", False):  # NOTE [ Pixel stage ]
                for k in done:
                    self.plan.pixels_into(tmp[k], self.rngs.for_sample(int(self.s.pos[lo + rows[k]]), PIXEL_STREAM))
            if not self.direct:
                for k in done:
                    arr[rows[k]] = tmp[k]
            todo = [k for k in todo if not ok[k]]
        for k in todo:
            r = rows[k]
            smap, m = maps[int(shard[r])], int(member[r])
            field = next(
                (e for e in self.ds.image if smap.view(e, m) is not None), self.ds.image[0]
            )
            key = smap.key(m)
            try:
                src = self.ds._image_source(
                    {field: smap.view(field, m)} if smap.view(field, m) is not None else {},
                    smap.url,
                    key,
                    field,
                )
                plan.sample_into(
                    src,
                    tmp[k] if self.direct else arr[r],
                    self.rngs.for_sample(int(self.s.pos[lo + r])),
                    url=smap.url,
                    key=key,
                    field=field,
                )
                done.append(k)
            except Exception as exc:  # becomes the sample's error, see _replace
                errors[r] = _as_error(exc, smap.url, key, field)
        if self.direct and done:
            done.sort()
            convert_into(tmp[done], np.asarray(rows, np.int64)[done], self.lut, arr, self.nchw)

    def _scratch(self, n: int) -> np.ndarray:
        """This thread's uint8 scratch batch of ``n`` samples, reused across batches: a
        new 38 MB array per batch cost ~10k page faults and its zeroing by the kernel."""
        buf = getattr(self._local, "scratch", None)
        if buf is None or buf.shape[0] < n:
            buf = self._local.scratch = np.empty((max(n, self._cap), *self.shape), np.uint8)
        return buf[:n]

    def _stage(self, lo: int, rows: list[int], shard, member, maps, out: np.ndarray) -> np.ndarray:
        """The plan's batch-level stage on these rows' encoded images; True where written."""
        sources = []
        for r in rows:
            smap, m = maps[int(shard[r])], int(member[r])
            field = next((e for e in self.ds.image if smap.view(e, m) is not None), None)
            sources.append(None if field is None or field.endswith("npy") else smap.view(field, m))
        indices = [int(self.s.pos[lo + r]) for r in rows]
        return np.asarray(self.plan.chunk_into(sources, indices, self.rngs.key, out), bool)

    def _field(self, ext: str, kind: str, shard, member, maps: dict, errors: dict) -> Any:
        n = len(shard)
        if kind == "int":
            values, ok = np.zeros(n, np.int64), np.zeros(n, np.bool_)
            for s, smap in maps.items():
                rows = np.flatnonzero((shard == s) & (member < smap.n))
                offsets, sizes = smap.fields.get(
                    ext, (np.full(smap.n, -1, np.int64), np.zeros(smap.n, np.int64))
                )
                _parse_ints(smap.data, offsets[member[rows]], sizes[member[rows]], rows, values, ok)
            for r in np.flatnonzero(~ok):
                if int(r) not in errors:
                    errors[int(r)] = self._int_error(maps[int(shard[r])], int(member[r]), ext)
            return torch.from_numpy(values)
        out = [None] * n
        for r in range(n):
            if r in errors:
                continue
            smap, m = maps[int(shard[r])], int(member[r])
            try:
                out[r] = self._decode(ext, kind, smap, m)
            except FastdataError as exc:
                errors[r] = exc
        return out

    def _decode(self, ext: str, kind: str, smap: ShardMap, m: int) -> Any:
        if ext == "__key__":
            return smap.key(m)
        if ext == "__url__":
            return smap.url
        data = smap.view(ext, m)
        if data is None:
            raise DecodeError(smap.url, smap.key(m), ext, "missing field")
        data = data if kind == "array" else bytes(data)
        return decode_field(kind, data, url=smap.url, key=smap.key(m), field=ext)

    def _int_error(self, smap: ShardMap, m: int, ext: str) -> Exception:
        try:
            self._decode(ext, "int", smap, m)
        except FastdataError as exc:
            return exc
        return DecodeError(smap.url, smap.key(m), ext, "cannot decode as int")

    def _replace(self, errors: dict, shard, member, maps: dict, out, extras: list) -> None:
        """NOTE [ Skipping bad samples ] of ``fastdata.loading.engine``, applied to a whole batch."""
        first = errors[min(errors)]
        if self.ds.on_error == "raise":
            raise first
        n = len(shard)
        good = [r for r in range(n) if r not in errors]
        if not good:
            urls = sorted({maps[int(s)].url for s in np.unique(shard) if int(s) in maps})
            raise DecodeError(", ".join(urls) or None, None, None,
                              f"every sample of a batch failed; first: {first}") from first  # fmt: skip
        for r in sorted(errors):
            donor = next((g for g in good if g > r), good[0])
            if out is not None:
                out[r] = out[donor]
            for values in extras:
                values[r] = values[donor]
            self._skipped(errors[r], maps.get(int(shard[r])), int(member[r]))

    def _skipped(self, err: Exception, smap: ShardMap | None, m: int) -> None:
        self.stats.skipped += 1
        if len(self.stats.skipped_keys) < 100:
            key = getattr(err, "key", None) or (
                smap.key(m) if smap is not None and m < smap.n else None
            )
            self.stats.skipped_keys.append(
                f"{getattr(err, 'url', None) or (smap.url if smap else None)}:{key}"
            )
        if self.ds.on_error == "warn":
            warnings.warn(f"skipped a bad sample: {err}", stacklevel=2)


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def _output_pool(ds: Any, size: int, memory_format: torch.memory_format) -> OutputPool:
    """The dataset's pool of CPU output batches for this layout, kept from epoch to epoch.

    NOTE [ Output reuse ] of ``fastdata.loading.buffers`` applies within an epoch; keeping the pool
    for the next epoch (the benchmark times a fresh epoch) spares its first batches the page
    faults of new memory too. The pool hands out only batches nobody refers to, and is freed
    with the dataset.
    """
    with _POOLS_LOCK:
        pools = _POOLS.setdefault(ds, {})
        key = (str(memory_format), str(getattr(ds.plan, "dtype", None)), size)
        return pools.setdefault(key, OutputPool(size))


_IDENTITY = np.tile(np.arange(256, dtype=np.uint8), (3, 1))


def ds_batch(schedule: Rows) -> int:
    """The largest batch of a schedule (ring buffers are allocated for it)."""
    return int(np.diff(schedule.starts).max()) if schedule.batches else 1


def _uses(schedule: Rows, first: int, n_shards: int) -> np.ndarray:
    """Per shard, how many batches from ``first`` on read it (NOTE [ Shards in memory ])."""
    batch_of = np.repeat(np.arange(schedule.batches), np.diff(schedule.starts))
    pairs = np.unique(batch_of * n_shards + schedule.shard)
    return np.bincount(pairs[pairs // n_shards >= first] % n_shards, minlength=n_shards)


def _npy_layout(smap: ShardMap, ext: str, sample_ops: list, shape: tuple):
    """``(pixel offset, h, w, chw, spec, header, header length)`` of a shard's ``.npy`` pixels, or None."""
    from fastdata.loading.fields import decode_npy

    offsets, sizes = smap.fields[ext]
    first = np.flatnonzero(offsets >= 0)
    if len(first) == 0:
        return None
    view = smap.view(ext, int(first[0]))
    try:
        arr = decode_npy(view)
    except ValueError:
        return None
    if arr.dtype != np.uint8 or arr.ndim != 3 or not arr.flags.c_contiguous:
        return None
    chw = arr.shape[0] == 3 and arr.shape[2] not in (1, 3, 4)
    h, w, c = (arr.shape[1], arr.shape[2], arr.shape[0]) if chw else arr.shape
    spec = crop_spec(sample_ops, h, w)
    if c != 3 or spec is None or (*spec.size, 3) != tuple(shape):
        return None
    start = len(view) - arr.nbytes
    header = np.frombuffer(bytes(view[:start]), np.uint8)
    return start, h, w, chw, spec, header, len(view)


@njit(nogil=True, cache=True)
def _same_header(data, offsets, sizes, header, size):
    out = np.zeros(len(offsets), np.bool_)
    for i in range(len(offsets)):
        if offsets[i] < 0 or sizes[i] != size:
            continue
        ok = True
        for k in range(len(header)):
            if data[offsets[i] + k] != header[k]:
                ok = False
                break
        out[i] = ok
    return out


@njit(nogil=True, cache=True)
def _parse_ints(data, offsets, sizes, rows, values, ok):
    for k in range(len(rows)):
        lo, n = offsets[k], sizes[k]
        if lo < 0:
            continue
        i, end = lo, lo + n
        while i < end and (data[i] == 32 or 9 <= data[i] <= 13):
            i += 1
        while end > i and (data[end - 1] == 32 or 9 <= data[end - 1] <= 13):
            end -= 1
        sign = 1
        if i < end and (data[i] == 45 or data[i] == 43):
            sign = -1 if data[i] == 45 else 1
            i += 1
        if i == end or end - i > 18:
            continue
        v, good = 0, True
        for j in range(i, end):
            d = data[j] - 48
            if d < 0 or d > 9:
                good = False
                break
            v = v * 10 + d
        if good:
            values[rows[k]], ok[rows[k]] = sign * v, True


def _as_error(exc: Exception, url: str, key: str, field: str) -> Exception:
    if isinstance(exc, FastdataError):
        return exc
    wrapped = DecodeError(url, key, field, f"{type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped
