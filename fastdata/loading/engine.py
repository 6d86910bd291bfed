"""The batch engine: samples in, finished batches out, through a ring of uint8 buffers.

Both ways into fastdata's fast path use this engine: ``fastdata.DataLoader(...,
compile=True)`` over an image folder, and the streaming shard loader. The caller says
*which* samples form each batch; the engine does the work and the bookkeeping.

API
---
``SampleRef(source, index, extra=None, url=None, key=None, field=None)``
    One sample to produce. ``source`` is the encoded image (``bytes``/``memoryview``), a
    path to a file holding it (read in the worker thread), or an HWC uint8 array.
    ``index`` is the sample's position in the epoch's stream (the same on every rerun
    of the epoch); it seeds the sample's randomness. ``extra`` is passed through to the
    batch untouched (a label, a dict of non-image fields). ``url``/``key``/``field``
    name the sample in errors.

``BatchEngine(plan, batch_size, num_threads=2, seed=0, processes=False, ...)``
    ``plan`` is a compiled transform plan (``fastdata.transforms``): ``sample_shape``
    ``(H, W, C)``; ``sample_into(src, out, rng, url=, key=, field=)`` writes one uint8 HWC
    sample into ``out``; ``finish(uint8_nhwc_batch, device=, memory_format=, out=)``
    returns the converted NCHW batch (written into ``out`` when one is given). Optionally
    ``chunk_into(sources, indices, key, out)``: a batch-level stage (NOTE [ Batch-level
    stage ]).
    ``iterate(batches, epoch=0, rank=0, worker=0, seed=None)`` takes an iterable of
    batches, each a sequence of ``SampleRef``, and yields ``(images, extras)`` per batch,
    where ``extras`` is ``collate_extras`` applied to the list of the samples' ``extra``
    (by default torch's ``default_collate``). The source is consumed lazily, at most
    ``ring_size`` batches ahead of the consumer, so the caller can tell its position from
    the batches it has received. ``stats`` counts batches, samples, skips and the time
    the consumer waited. ``close()`` stops the workers (also a context manager); a
    closed engine restarts on the next ``iterate``.

Guarantees: batches come out in the order they went in; the randomness of a sample is a
pure function of ``(seed, epoch, rank, worker, index)`` (see NOTE [ Per-sample
randomness ]), so it does not depend on the number of threads or on timing; a batch keeps
its size when samples are skipped (NOTE [ Skipping bad samples ]); every wait polls with a
timeout and the first error of a sample reaches the consumer as the exception it was
(with its traceback), wrapped in ``DecodeError`` when it was not already a fastdata error.

NOTE [ Batch-level stage ]
A worker first reads the bytes of every sample of its chunk (a few dozen samples), then,
when the plan has ``chunk_into``, hands them all to it at once with the samples' indices
and the epoch's key words (``SampleRng.key``); the stage writes the samples it covers
into their slots in one compiled call and returns a bool per sample. The rest (declined
formats, corrupt data, a file that could not be read) go through ``sample_into`` one by
one as before, which raises the error that names the file. For 32x32 PNGs this removes
almost all per-sample Python (``fastdata.transforms.stages.png``); for RandomResizedCrop on JPEGs,
about 0.12 ms of Python per sample and the garbage collection its short-lived objects
caused, 5% of the CPU (``fastdata.transforms.stages.jpeg``): about 1,390 instead of 1,100 samples/s
with two threads on the 2-core machine.

NOTE [ Threads, not processes ]
Threads when the per-sample work runs mostly outside the GIL, forked processes when it
does not; decided by profiling and timing the two benchmark workloads on the 2-core
machine (BENCHMARKS.md, "DataLoader", worker modes):
- ImageNet-like JPEG -> RandomResizedCrop(224) + flip: ~2.3 ms of CPU per sample, of which
  ~1.0 ms is libjpeg-turbo decoding and ~1.1 ms the Numba ``nogil`` resampling, both
  releasing the GIL; the Python around them is under 10%. Threads scale, write straight
  into the ring and pickle nothing: 730 samples/s against 612 with two processes.
- 32x32 PNG -> RandomCrop(32, padding=4) + flip, per-sample path: ~0.25 ms of CPU per
  sample, much of it Python holding the GIL (file open, per-sample generator,
  bookkeeping), so two threads scaled poorly and ``processes=True`` (``num_threads``
  forked workers writing into a shared-memory ring; only the ``SampleRef`` lists go to
  them and only failures come back, never pixels) won: 6,878 samples/s against 5,610.
  With the batch-level stage (NOTE [ Batch-level stage ]) a sample costs ~0.06 ms of CPU,
  ~0.03 ms of it in the ``nogil`` kernel, and threads win: about 35,000 samples/s against
  21,000 with processes, which pay for pickling the ``SampleRef`` lists and for the pool's
  queues (``bench_loader.py --workloads cifar --variants compile-threads
  compile-processes --reps 3``).
The loader picks processes for outputs of at most 64x64 pixels unless the plan has a
batch-level stage and the folder holds PNGs (``worker_mode="auto"``).
Buffers are reused only when safe: NOTE [ Buffer reuse ] and NOTE [ Output reuse ] in
``fastdata.loading.buffers``.
"""

from __future__ import annotations

import concurrent.futures.thread
import multiprocessing
import os
import stat
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_EXCEPTION,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import default_collate

from fastdata.errors import DecodeError, FastdataError
from fastdata.loading.buffers import BatchRing, OutputPool, shares_memory

__all__ = ["BatchEngine", "EngineStats", "Plan", "SampleRef", "SampleRng", "ON_ERROR"]

ON_ERROR = ("raise", "skip", "warn")
_POLL_S = 1.0  # how often a blocked wait wakes up to check the deadline
_NOT_STARTED = -2  # progress mark of a chunk no worker has taken yet
PIXEL_STREAM, BATCH_STREAM = 1, 2  # see SampleRng.for_sample


class Plan(Protocol):
    """What the engine needs from a compiled transform pipeline."""

    sample_shape: tuple[int, int, int]

    def sample_into(
        self, src: Any, out: np.ndarray, rng: np.random.Generator, *, url: Any, key: Any, field: Any
    ) -> None: ...

    def finish(
        self, batch: torch.Tensor, device: Any = None, memory_format: Any = ..., out: Any = None
    ) -> Any: ...

    # Optional: ``chunk_into(sources, indices, key, out) -> bool array | None``, a batch-level
    # stage (NOTE [ Batch-level stage ]); plans without it go sample by sample.
    # ``has_pixel_stage`` and ``pixels_into(slot, rng)``: what ``sample_into`` does after the
    # geometry, run on the slots the batch-level stage wrote (stream ``PIXEL_STREAM``).
    # ``has_batch_augment`` and ``augment_batch(images, rng_of)``: random steps on the
    # converted batch (stream ``BATCH_STREAM``).


@dataclass(frozen=True, slots=True)
class SampleRef:
    """One sample for the engine to produce (see the module docstring)."""

    source: Any
    index: int
    extra: Any = None
    url: str | None = None
    key: str | None = None
    field: str | None = None


@dataclass
class EngineStats:
    """Counters of one engine, summed over every epoch it ran.

    Attributes:
        batches: batches yielded.
        samples: samples yielded (a skipped sample's replacement counts once).
        skipped: samples that failed and were replaced (``on_error`` "skip"/"warn").
        skipped_keys: the first 100 skipped samples, as ``"url:key"`` strings.
        wait_s: seconds the consumer spent waiting for a batch.
        elapsed_s: seconds from the first request to the last batch of each epoch.
        sources: samples delivered per source of a ``fastdata.Mix``, by name.
    """

    batches: int = 0
    samples: int = 0
    skipped: int = 0
    skipped_keys: list[str] = field(default_factory=list)
    wait_s: float = 0.0
    elapsed_s: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        """Throughput so far."""
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def wait_share(self) -> float:
        """Share of the elapsed time the consumer waited for data."""
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


class SampleRng:
    """Per-sample random generators, a pure function of (seed, epoch, rank, worker, index).

    NOTE [ Per-sample randomness ]
    ``(seed, epoch, rank, worker)`` goes through numpy's ``SeedSequence`` once per epoch to
    make a 128-bit Philox key; the sample ``index`` becomes the second word of the Philox
    counter, so every sample owns the disjoint stream of counters ``(k, index, 0, 0)``.
    Building a fresh ``Generator`` per sample costs ~30 us, too much for 32x32 images;
    resetting a per-thread Philox's key and counter costs ~3 us and gives the same streams.
    """

    def __init__(self, seed: int, epoch: int = 0, rank: int = 0, worker: int = 0) -> None:
        words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in (seed, epoch, rank, worker)]
        self.words = tuple(words)
        key = np.random.SeedSequence(words).generate_state(2, np.uint64)
        self._key = key
        self.key = key.copy()  # the key words batch-level stages hash with sample indices
        self._local = threading.local()

    def for_sample(self, index: int, stream: int = 0) -> np.random.Generator:
        """The generator of sample ``index``, reset to the start of its stream.

        Args:
            index: the sample's index in the epoch.
            stream: which of the sample's streams: 0 for the sample stage (crops, flips,
                and the pixel stage after them), ``PIXEL_STREAM`` for the pixel stage of
                a sample the batch-level stage cropped, ``BATCH_STREAM`` for the random
                steps on the converted batch (RandomErasing). Distinct streams start at
                counters ``(0, index, stream, 0)``, so they never overlap.

        The returned object is reused by the next call in the same thread: use it before
        asking for another sample's generator.
        """
        local = self._local
        if getattr(local, "gen", None) is None:
            local.bitgen = np.random.Philox(key=self._key)
            local.gen = np.random.Generator(local.bitgen)
            local.state = local.bitgen.state
        state = local.state
        state["state"]["counter"][:] = (0, int(index) & 0xFFFFFFFFFFFFFFFF, stream, 0)
        state["state"]["key"][:] = self._key
        state["buffer_pos"] = 4
        state["has_uint32"] = 0
        local.bitgen.state = state
        return local.gen


@dataclass
class _InFlight:
    slot: int
    refs: Sequence[SampleRef]
    futures: list[Future]
    errors: list[BaseException | None]
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (lo, hi) of each future
    progress: list[int] = field(default_factory=list)  # sample each thread chunk is on


class BatchEngine:
    """Runs a compiled plan over batches of ``SampleRef`` with a thread pool and a ring.

    Args:
        plan: the compiled transform plan (see the module docstring).
        batch_size: the size the ring's buffers are allocated for; a larger batch makes
            its buffer grow.
        num_threads: worker threads for the per-sample work; 0 does it in the caller.
        seed: seeds the per-sample randomness with ``epoch``, ``rank``, ``worker``.
        ring_size: buffers in the ring; batches in flight at once (default
            ``max(2, num_threads)`` + 1).
        device: where the batches go (``None``: stay on the CPU).
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.
        on_error: ``"raise"``, ``"skip"`` or ``"warn"`` for a sample that fails.
        timeout: seconds to wait for one batch before ``RuntimeError``; 0 waits forever
            (still polling, so an interrupt gets through).
        collate_extras: turns the list of the batch's ``extra`` into the batch's extras.
        stats: the counters to add to (several engines may share one); a new one if None.
        processes: run the per-sample work in ``num_threads`` forked worker processes
            instead of threads (see NOTE [ Threads, not processes ]); batches then may not
            exceed ``batch_size``.
    """

    def __init__(
        self,
        plan: Plan,
        batch_size: int,
        *,
        num_threads: int = 2,
        seed: int = 0,
        ring_size: int | None = None,
        device: torch.device | str | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        on_error: str = "raise",
        timeout: float = 0,
        collate_extras: Callable[[list], Any] | None = default_collate,
        stats: EngineStats | None = None,
        processes: bool = False,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if batch_size < 1 or num_threads < 0 or timeout < 0:
            raise ValueError(
                "batch_size must be >= 1, num_threads >= 0 and timeout >= 0; got "
                f"{batch_size}, {num_threads}, {timeout}"
            )
        self.plan = plan
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.seed = int(seed)
        self.ring_size = int(ring_size or max(2, num_threads) + 1)
        self.device = torch.device(device) if device is not None else None
        self.memory_format = memory_format
        self.on_error = on_error
        self.timeout = float(timeout)
        self.collate_extras = collate_extras
        self.processes = bool(processes) and num_threads > 0 and _can_fork()
        self.stats = stats if stats is not None else EngineStats()
        self._on_cuda = self.device is not None and self.device.type == "cuda"
        self._ring: BatchRing | None = None
        self._pool: Executor | None = None
        self._outputs = OutputPool(0 if self._on_cuda else 2)

    # -- life cycle -------------------------------------------------------------------

    def _start(self) -> BatchRing:
        if self._ring is None:
            shape = tuple(int(v) for v in self.plan.sample_shape)
            pin = self._on_cuda and torch.cuda.is_available() and not self.processes
            self._ring = BatchRing(self.ring_size, self.batch_size, shape, pin, self.processes)  # type: ignore[arg-type]
        if self._pool is None and self.processes:
            self._pool = ProcessPoolExecutor(
                self.num_threads,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_process,
                initargs=(self.plan, self._ring.tensors),
            )
        elif self._pool is None and self.num_threads > 0:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="fastdata")
        return self._ring

    def close(self) -> None:
        """Stops the worker threads; queued work is cancelled. The engine can restart."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pipeline -----------------------------------------------------------------

    def iterate(
        self,
        batches: Iterable[Sequence[SampleRef]],
        *,
        epoch: int = 0,
        rank: int = 0,
        worker: int = 0,
        seed: int | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yields ``(images, extras)`` for each batch of ``batches``, in order.

        Args:
            batches: each item a sequence of at most ``batch_size`` ``SampleRef``.
            epoch: epoch number, rank, worker: mixed into the per-sample randomness.
            rank: see ``epoch``.
            worker: see ``epoch``.
            seed: replaces the engine's ``seed`` for this run.
        """
        ring = self._start()
        rngs = SampleRng(self.seed if seed is None else seed, epoch, rank, worker)
        source = iter(batches)
        inflight: deque[_InFlight] = deque()
        started = time.perf_counter()
        try:
            exhausted = self._top_up(source, inflight, ring, rngs)
            while inflight:
                job = inflight[0]
                self._wait(job)
                images, extras = self._assemble(job, ring, rngs)
                inflight.popleft()
                if not exhausted:
                    exhausted = self._top_up(source, inflight, ring, rngs)
                self.stats.batches += 1
                self.stats.samples += len(job.refs)
                self.stats.elapsed_s += time.perf_counter() - started
                yield images, extras
                del images, extras  # see NOTE [ Output reuse ]
                started = time.perf_counter()
        finally:
            self._drain(inflight, ring)

    def _drain(self, inflight: deque[_InFlight], ring: BatchRing) -> None:
        """Lets the queued work of a closed or failed iteration go (NOTE [ Stuck workers ]).

        NOTE [ Stuck workers ]
        Work already running cannot be cancelled, so cleanup waits for it, but no longer
        than the user's ``timeout``: a worker stuck in a read that never returns (a file on a
        hung network mount, a FIFO that ``_read_file`` did not catch) would otherwise hang
        the consumer in cleanup after the timeout was reported. Past the deadline the engine
        abandons its ring and its pool (a stuck worker may still write into its slot; the
        next ``iterate`` builds new ones), keeps abandoned threads from blocking the
        interpreter's exit, and raises the timeout naming the samples still being worked on.
        """
        for job in inflight:
            for fut in job.futures:
                fut.cancel()
        deadline = None if self.timeout <= 0 else time.perf_counter() + self.timeout
        for job in inflight:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            _, not_done = wait(job.futures, timeout=left)
            if not_done:
                self._abandon()
                if not isinstance(sys.exc_info()[1], (type(None), GeneratorExit)):
                    return  # the error on its way out already says what went wrong
                raise RuntimeError(
                    f"DataLoader timed out after {self.timeout} seconds: the workers are still "
                    f"busy with {self._busy_with(job, not_done)} after the iteration ended"
                )
            if job.slot not in ring.free:
                ring.free.append(job.slot)

    def _abandon(self) -> None:
        """Drops a ring and pool whose workers are stuck (NOTE [ Stuck workers ])."""
        pool, self._pool, self._ring = self._pool, None, None
        if pool is None:
            return
        for thread in getattr(pool, "_threads", ()):
            # Worker threads of a ThreadPoolExecutor are joined at interpreter exit.
            concurrent.futures.thread._threads_queues.pop(thread, None)
        pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _busy_with(job: _InFlight, not_done: set[Future]) -> str:
        """Names the samples of the unfinished chunks, as precisely as is known."""
        names = []
        for n, fut in enumerate(job.futures):
            if fut not in not_done:
                continue
            lo, hi = job.chunks[n]
            at = job.progress[n] if n < len(job.progress) else -1
            if at == _NOT_STARTED:
                continue
            picked = [job.refs[at]] if lo <= at < hi else job.refs[lo:hi]
            names.extend(_describe(ref) for ref in picked)
        if not names:
            return f"a batch of {len(job.refs)} samples"
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    def _top_up(self, source: Iterator, inflight: deque, ring: BatchRing, rngs: SampleRng) -> bool:
        """Queues batches while buffers are free; returns True once ``source`` is done."""
        while ring.free:
            try:
                refs = next(source) if self.timeout <= 0 else _next_within(source, self.timeout)
            except StopIteration:
                return True
            if len(refs) == 0:
                raise ValueError("a batch of the engine's input holds no sample")
            slot = ring.take(len(refs))
            inflight.append(self._submit(list(refs), slot, ring, rngs))
        return False

    def _submit(
        self, refs: list[SampleRef], slot: int, ring: BatchRing, rngs: SampleRng
    ) -> _InFlight:
        job = _InFlight(slot, refs, [], [None] * len(refs))
        out = ring.arrays[slot]
        if self._pool is None:
            fut: Future = Future()
            fut.set_result(_produce(self.plan, refs, 0, len(refs), out, rngs))
            job.futures.append(fut)
            job.chunks.append((0, len(refs)))
            return job
        step = max(1, -(-len(refs) // (4 * self.num_threads)))
        for n, lo in enumerate(range(0, len(refs), step)):
            hi = min(lo + step, len(refs))
            if self.processes:
                fut = self._pool.submit(_process_chunk, slot, refs[lo:hi], lo, rngs.words)
            else:
                job.progress.append(_NOT_STARTED)
                fut = self._pool.submit(
                    _produce, self.plan, refs, lo, hi, out, rngs, (job.progress, n)
                )
            job.futures.append(fut)
            job.chunks.append((lo, hi))
        return job

    def _wait(self, job: _InFlight) -> None:
        """Waits for a batch's chunks, polling, and raises the user's timeout as torch does."""
        t0 = time.perf_counter()
        pending = job.futures
        while True:
            left = _POLL_S if self.timeout <= 0 else min(_POLL_S, t0 + self.timeout - time.perf_counter())
            _, not_done = wait(pending, timeout=max(0.0, left), return_when=FIRST_EXCEPTION)
            if not not_done:
                break
            pending = list(not_done)
            waited = time.perf_counter() - t0
            if self.timeout > 0 and waited >= self.timeout:
                raise RuntimeError(
                    f"DataLoader timed out after {self.timeout} seconds waiting for a batch; "
                    f"the workers are still busy with {self._busy_with(job, not_done)}"
                )
        self.stats.wait_s += time.perf_counter() - t0
        for fut in job.futures:
            try:
                failures = fut.result(timeout=0)
            except BrokenProcessPool as exc:
                self.close()
                raise RuntimeError(
                    "a worker process of the batch engine exited unexpectedly (killed, out of "
                    "memory or crashed); use num_workers=0 to debug in the main process"
                ) from exc
            for i, err in failures:
                job.errors[i] = err

    def _assemble(self, job: _InFlight, ring: BatchRing, rngs: SampleRng) -> tuple[Any, Any]:
        """Applies the error policy, runs the batch stage and frees the buffer."""
        n = len(job.refs)
        extras = [ref.extra for ref in job.refs]
        buf = ring.tensors[job.slot]
        if any(err is not None for err in job.errors):
            self._replace_failed(job, ring.arrays[job.slot], extras)
        try:
            images = self.plan.finish(
                buf[:n], device=self.device, memory_format=self.memory_format,
                out=self._output_for(n),
            )  # fmt: skip
            if isinstance(images, torch.Tensor) and shares_memory(images, buf):
                images = images.clone(memory_format=self.memory_format)
            if getattr(self.plan, "has_batch_augment", False):
                refs = job.refs
                self.plan.augment_batch(images, lambda i: rngs.for_sample(refs[i].index, BATCH_STREAM))
            if n == self.batch_size:  # a short last batch would push a full one out
                self._outputs.keep(images)
        finally:
            ring.give_back(job.slot, self._on_cuda)
        collated = self.collate_extras(extras) if self.collate_extras else extras
        return images, collated

    def _output_for(self, n: int) -> torch.Tensor | None:
        """A pooled output for a batch of ``n`` samples: a free one of that size, else (a
        short last batch) the leading slice of a free full-size one, so that the end of an
        epoch does not fault in a fresh batch beside the pooled ones (NOTE [ Output reuse ])."""
        out = self._outputs.get(n)
        if out is None and n < self.batch_size:
            full = self._outputs.get(self.batch_size)
            out = None if full is None else full[:n]
        return out

    def _replace_failed(self, job: _InFlight, out: np.ndarray, extras: list) -> None:
        """NOTE [ Skipping bad samples ]

        A failed sample's slot (and its extra) is filled with a copy of the next good
        sample of the same batch, cyclically. The batch keeps its size and batch ``b``
        always consists of the stream's samples of batch ``b``, which keeps resumption a
        matter of counting batches. Each replaced sample counts in ``stats.skipped``. A
        batch in which every sample failed cannot be filled: it raises.
        """
        first = next(err for err in job.errors if err is not None)
        if self.on_error == "raise":
            raise first
        good = [i for i, err in enumerate(job.errors) if err is None]
        if not good:
            raise DecodeError(None, None, None, "every sample of a batch failed") from first
        for i, err in enumerate(job.errors):
            if err is None:
                continue
            donor = next((g for g in good if g > i), good[0])
            out[i] = out[donor]
            extras[i] = extras[donor]
            self.stats.skipped += 1
            ref = job.refs[i]
            if len(self.stats.skipped_keys) < 100:
                self.stats.skipped_keys.append(f"{ref.url}:{ref.key}")
            if self.on_error == "warn":
                warnings.warn(f"skipped a bad sample: {err}", stacklevel=4)


def _produce(
    plan: Plan,
    refs: Sequence[SampleRef],
    lo: int,
    hi: int,
    out: np.ndarray,
    rngs: SampleRng,
    progress: tuple[list[int], int] | None = None,
) -> list[tuple[int, Exception]]:
    """Worker body: samples ``lo:hi`` of a batch into their slots; failures as values.

    A plan with a batch-level stage (``plan.chunk_into``, see NOTE [ Batch-level stage ])
    gets the chunk's sources first; the samples it declines go through ``sample_into``.
    ``progress``: ``(list, n)``; item ``n`` of the list is set to the sample being worked
    on, so that a timeout can name it (-1 while the batch-level stage runs).
    """
    failures, sources = [], []
    marks, n = progress if progress is not None else ([-1], 0)
    for i in range(lo, hi):
        marks[n] = i
        src = refs[i].source
        try:
            if isinstance(src, (str, os.PathLike)):
                src = _read_file(src)
        except Exception as exc:  # handed to the consumer, see NOTE [ Skipping bad samples ]
            failures.append((i, _as_fastdata_error(exc, refs[i])))
            src = None
        sources.append(src)
    todo = range(lo, hi)
    marks[n] = -1
    chunk_into = getattr(plan, "chunk_into", None)
    done = None if chunk_into is None or hi == lo else chunk_into(
        sources, [ref.index for ref in refs[lo:hi]], rngs.key, out[lo:hi]
    )  # fmt: skip
    if done is not None:
        done = np.asarray(done, bool)
        todo = [lo + int(i) for i in np.flatnonzero(~done)]
        if getattr(plan, "has_pixel_stage", False):  # NOTE [ Pixel stage ] in the plan
            for i in np.flatnonzero(done):
                marks[n] = lo + int(i)
                try:
                    plan.pixels_into(out[lo + int(i)], rngs.for_sample(refs[lo + int(i)].index, PIXEL_STREAM))
                except Exception as exc:  # handed to the consumer like any sample's error
                    failures.append((lo + int(i), _as_fastdata_error(exc, refs[lo + int(i)])))
    failed = {i for i, _ in failures}
    for i in todo:
        if i in failed:
            continue
        ref = refs[i]
        marks[n] = i
        try:
            rng = rngs.for_sample(ref.index)
            plan.sample_into(
                sources[i - lo], out[i], rng, url=ref.url, key=ref.key, field=ref.field
            )
        except Exception as exc:  # handed to the consumer, see NOTE [ Skipping bad samples ]
            failures.append((i, _as_fastdata_error(exc, ref)))
    return failures


def _read_file(path: str | os.PathLike) -> bytes:
    """The file's bytes, read with as few system calls and as little Python as possible.

    ``open(...).read()`` costs ~13 us on a 2 KB file (buffered reader, context manager),
    ``os.open`` and one ``os.read`` ~4 us: a fifth of the work of a 32x32 PNG sample.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{os.fspath(path)}: not a regular file (a FIFO, socket or device)")
        data = os.read(fd, _FIRST_READ)
        if len(data) < _FIRST_READ:
            return data
        parts = [data]
        while chunk := os.read(fd, max(os.fstat(fd).st_size, _FIRST_READ)):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


_FIRST_READ = 1 << 16
_PROCESS: dict[str, Any] = {}  # a worker process's plan, ring arrays and rng


def _init_process(plan: Plan, ring: list[torch.Tensor]) -> None:
    _PROCESS.update(plan=plan, arrays=[t.numpy() for t in ring], rngs=None)
    threading.Thread(
        target=_watch_parent, args=(os.getppid(),), daemon=True, name="fastdata-watchdog"
    ).start()


def _watch_parent(parent: int) -> None:
    """Ends a worker process whose parent died (killed, or ``os._exit``), as torch's do.

    A forked worker holds both ends of its pool's pipes, so it never sees them close; it
    would wait for work forever, adopted by init. Polling ``getppid`` is what torch's
    ``ManagerWatchdog`` does too.
    """
    while os.getppid() == parent:
        time.sleep(_WATCH_S)
    os._exit(1)


_WATCH_S = 0.5


def _next_within(source: Iterator, timeout: float) -> Any:
    """``next(source)``, run in a daemon thread so that a call that never returns (a
    ``target_transform``, a sampler) ends in the user's timeout instead of a hang."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, next(source)))
        except BaseException as exc:  # StopIteration included: re-raised below
            box.append((False, exc))

    thread = threading.Thread(target=run, daemon=True, name="fastdata-source")
    thread.start()
    thread.join(timeout)
    if not box:
        raise RuntimeError(
            f"DataLoader timed out after {timeout} seconds waiting for the next batch of "
            "samples: the sampler or the dataset's target_transform did not return"
        )
    ok, value = box[0]
    if ok:
        return value
    raise value


def _process_chunk(
    slot: int, refs: list[SampleRef], lo: int, words: tuple[int, ...]
) -> list[tuple[int, Exception]]:
    """Worker-process body: like ``_produce``; errors carry their traceback as text."""
    rngs = _PROCESS["rngs"]
    if rngs is None or rngs.words != words:
        rngs = _PROCESS["rngs"] = SampleRng(*words)
    out = _PROCESS["arrays"][slot][lo:]
    failures = _produce(_PROCESS["plan"], refs, 0, len(refs), out, rngs)
    return [(lo + i, _picklable(err)) for i, err in failures]


def _picklable(err: Exception) -> Exception:
    """A DecodeError whose message ends with the worker's traceback (tracebacks don't pickle)."""
    cause = err.__cause__ or err
    text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    base = err.message if isinstance(err, DecodeError) else str(err)
    where = (err.url, err.key, err.field) if isinstance(err, DecodeError) else (None, None, None)
    return DecodeError(*where, f"{base}\n\nTraceback in the worker process:\n{text}")


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _as_fastdata_error(exc: Exception, ref: SampleRef) -> Exception:
    if isinstance(exc, FastdataError):
        return exc
    url = ref.url if ref.url is not None else _path_or_none(ref.source)
    wrapped = DecodeError(url, ref.key, ref.field, f"{type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    wrapped.__traceback__ = exc.__traceback__
    return wrapped


def _describe(ref: SampleRef) -> str:
    """A sample's name for messages: its file, or its shard and key."""
    path = _path_or_none(ref.source)
    if path is not None:
        return path
    return f"{ref.url}:{ref.key}" if ref.key is not None else f"sample {ref.index} of {ref.url}"


def _path_or_none(source: Any) -> str | None:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
