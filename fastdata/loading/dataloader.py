"""``fastdata.DataLoader``: torch's DataLoader, plus a one-keyword fast path.

Without new arguments it *is* ``torch.utils.data.DataLoader`` (a subclass that changes
nothing): the same arguments, defaults, validation, batches, worker processes, seeding,
errors, timeouts and persistent workers, at the same speed and memory. Existing scripts
switch by changing one import.

``compile=True`` takes over the iteration when the dataset is a torchvision
``ImageFolder``/``DatasetFolder`` whose transform fastdata can compile (see
``fastdata.loading.compile``): indices still come from the very same sampler (so shuffling gives
the same order as torch for the same generator), but decoding and the geometric transforms
run in a thread pool straight into preallocated uint8 batches, and the conversion and
normalisation run once per batch, on ``device`` when given (see ``fastdata.loading.engine``).
Batches are ``[images, labels]`` like torch's default collation of ``(image, label)``
pairs: a float NCHW tensor and an int64 tensor (one-hot float rows after MixUp/CutMix).
What cannot be compiled is named in a warning, every reason at once, and runs on the
drop-in path; ``repr(loader)`` says what was compiled, or why not.

NOTE [ compile=True and worker arguments ]
On the compiled path ``num_workers`` is the number of worker threads or processes (0: the
work runs in the iterating thread; ``worker_mode`` chooses), ``timeout`` bounds the wait
for one batch, for the next batch of the sampler and ``target_transform`` (which run in the
iterating thread), and the cleanup after a failure (NOTE [ Stuck workers ] in
``fastdata.loading.engine``); worker processes exit when the loader's process dies, as
torch's do. ``prefetch_factor`` sets how many batches are queued ahead of the consumer
(all workers share each batch), and ``persistent_workers`` keeps the workers between
epochs. ``worker_init_fn`` and ``multiprocessing_context`` are not used there: the
transforms' randomness comes from a per-sample generator seeded from the loader's
``generator`` (see NOTE [ Per-sample randomness ] in ``fastdata.loading.engine``), not from the
workers' global RNGs, and worker processes are forked.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.utils.data
from torch.utils.data import get_worker_info

from fastdata.loading.compile import CompiledFolder, compile_folder
from fastdata.loading.engine import ON_ERROR, BatchEngine, EngineStats
from fastdata.loading.resume import is_stateful, stateful_index_sampler
from fastdata.loading.stateful import TORCHDATA_HINT, stateful_iterator

__all__ = ["DataLoader", "get_worker_info"]

WORKER_MODES = ("auto", "threads", "processes")
# Samples of at most this many output pixels are cheap to decode and transform, so the
# Python around them (GIL held) dominates: worker processes, not threads, there.
SMALL_IMAGE_PIXELS = 64 * 64


T_co = TypeVar("T_co", covariant=True)

# State keys of the compiled path (NOTE [ Resuming the compiled path ]); the shared ones
# are torchdata's.
_GENERATOR_STATE = "_generator_state"
_INDEX_SAMPLER_STATE = "_index_sampler_state"
_SAMPLER_ITER_STATE = "_sampler_iter_state"
_START_KEYS = (_GENERATOR_STATE, _INDEX_SAMPLER_STATE, _SAMPLER_ITER_STATE)
_EPOCH = "_epoch"
_BASE_SEED = "_base_seed"
_NUM_YIELDED = "_num_yielded"
_ITERATOR_FINISHED = "_iterator_finished"


class DataLoader(torch.utils.data.DataLoader[T_co]):
    """A drop-in ``torch.utils.data.DataLoader`` with an optional compiled fast path.

    Every argument up to ``in_order`` is torch's, with torch's defaults and meaning.

    Args:
        compile: run torchvision image folders and transforms on the compiled path;
            falls back (with a warning naming the reason) when they cannot be compiled.
        device: where batches are delivered (``"cuda"``, ``"cpu"``...); on the
            compiled path the uint8 batch is copied there and converted there. None keeps
            them where torch's DataLoader leaves them.
        memory_format: layout of the compiled path's image batches
            (``torch.contiguous_format`` or ``torch.channels_last``).
        on_error: compiled path only: ``"raise"``, ``"skip"`` or ``"warn"`` for an image
            that cannot be read or decoded; skips are counted in ``stats``.
        worker_mode: compiled path only: ``"threads"``, ``"processes"`` or ``"auto"``
            (processes for small images the batch-level stage does not cover, threads
            otherwise; NOTE [ Threads, not processes ] in ``fastdata.loading.engine``).
        snapshot_every_n_steps: torchdata ``StatefulDataLoader``'s argument: how often
            worker processes send their dataset state to the loader (NOTE [ Resuming ]).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Any = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Any = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        compile: bool = False,
        device: torch.device | str | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        on_error: str = "raise",
        worker_mode: str = "auto",
        snapshot_every_n_steps: int | None = 1,
    ) -> None:
        super().__init__(
            dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, collate_fn,
            pin_memory, drop_last, timeout, worker_init_fn, multiprocessing_context,
            generator, prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device, in_order=in_order,
        )  # fmt: skip
        if num_workers > 0 and prefetch_factor == 0:  # torch's own iterator asserts it later
            raise ValueError(
                "prefetch_factor must be at least 1 with num_workers > 0 (batches loaded ahead "
                "by each worker), got 0; leave it None for the default of 2"
            )
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if worker_mode not in WORKER_MODES:
            raise ValueError(f"worker_mode must be one of {WORKER_MODES}, got {worker_mode!r}")
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(
                "memory_format must be torch.contiguous_format or torch.channels_last, "
                f"got {memory_format!r}"
            )
        self.device = torch.device(device) if device is not None else None
        self.memory_format = memory_format
        self.on_error = on_error
        self.worker_mode = worker_mode
        self.compiled: CompiledFolder | None = None
        self.compile_reasons: list[str] = []  # why compile=True fell back (empty: it did not)
        self._stats = EngineStats()
        self._epoch = 0
        self._spare_engine: BatchEngine | None = None  # NOTE [ Buffers outlive the epoch ]
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.next_iter_state: dict | None = None  # a loaded state for the next iterator
        self._initial_iter_for_state_dict = False  # NOTE [ Resuming ]
        self._handed: weakref.ref | None = None  # NOTE [ The iterator the user holds ]
        self._handed_token = 0
        self._dropped_state: dict | None = None
        if compile:
            self.compiled = self._compile()

    def _compile(self) -> CompiledFolder | None:
        """Compiles the dataset, or warns naming every reason it cannot (and what to change)."""
        reasons = [] if self._auto_collation else [
            "batch_size=None (automatic batching off: give a batch_size)"
        ]  # fmt: skip
        compiled, more = compile_folder(self.dataset, collate_fn=self.collate_fn)
        reasons += more
        if reasons:
            compiled = None
            self.compile_reasons = reasons
            listed = "".join(f"\n  - {r}" for r in reasons)
            warnings.warn(
                f"DataLoader(compile=True) could not compile ({len(reasons)} "
                f"{'reason' if len(reasons) == 1 else 'reasons'}):{listed}\n"
                "These batches are produced by the uncompiled DataLoader instead.",
                stacklevel=3,
            )
        return compiled

    def __repr__(self) -> str:
        """Names the dataset, the batch size and what ``compile=True`` compiled (or why not)."""
        head = f"DataLoader({type(self.dataset).__name__}, batch_size={self.batch_size}"
        if self.compiled is not None:
            return f"{head}, compiled=[{self.compiled.describe()}])"
        if self.compile_reasons:
            return f"{head}, compiled=False: {'; '.join(self.compile_reasons)})"
        return f"{head}, compiled=False)"

    @property
    def stats(self) -> EngineStats:
        """Counters of the compiled path over all epochs (batches, samples, skips, waits)."""
        return self._stats

    @property
    def _index_sampler(self) -> Any:
        """torch's index sampler, made resumable (NOTE [ Resumable torch samplers ])."""
        sampler = self.__dict__.get("_resumable_sampler")
        if sampler is None:
            sampler = stateful_index_sampler(torch.utils.data.DataLoader._index_sampler.fget(self))
            self.__dict__["_resumable_sampler"] = sampler
        return sampler

    def __iter__(self) -> Any:
        hook = getattr(self.dataset, "__fastdata_iter__", None)
        if hook is not None:  # a dataset with its own batch path (ShardDataset)
            return hook(self)
        persistent = self.persistent_workers and self.num_workers > 0
        self._handed, self._dropped_state = None, None
        if self._initial_iter_for_state_dict:  # made by state_dict() before the first iter()
            self._initial_iter_for_state_dict = False
        elif persistent and self._iterator is not None:
            self._iterator._reset(self)
        else:
            self._iterator = self._get_iterator()
        if getattr(self._iterator, "_finished", False):  # a state saved at the end of an epoch
            if persistent:
                self._iterator._reset(self)
            else:
                self._iterator = self._get_iterator()
        batches = self._iterator
        if not persistent:  # NOTE [ The iterator the user holds ]
            self._iterator = None
            self._handed_token += 1
            batches = _Handed(self, batches, self._handed_token)
            self._handed = weakref.ref(batches)
        return batches if self.device is None or self.compiled is not None else _moved(batches, self.device)

    def _get_iterator(self) -> Any:
        """A new iterator for one epoch, resumed from ``next_iter_state`` when one was loaded."""
        state, self.next_iter_state = self.next_iter_state, None
        if self.compiled is not None:
            return _CompiledIter(self, state)
        return stateful_iterator(self, state)

    def __len__(self) -> int:
        """Batches per epoch; for a dataset with its own batch path (``ShardDataset``), the
        batches its next epoch yields on this rank."""
        if getattr(self.dataset, "__fastdata_iter__", None) is not None and hasattr(self.dataset, "num_batches"):
            return self.dataset.num_batches(self.batch_size, self.num_workers)
        return super().__len__()

    def state_dict(self) -> dict:
        """The iteration state, to resume after the last batch delivered (NOTE [ Resuming ]).

        For a dataset with its own batch path (``ShardDataset``), the dataset's state;
        otherwise the state of the current (or next) iterator, with the keys of torchdata's
        ``StatefulDataLoader``.
        """
        if getattr(self.dataset, "__fastdata_iter__", None) is not None:
            if not hasattr(self.dataset, "state_dict"):
                raise TypeError(f"{type(self.dataset).__name__} keeps no iteration state to save")
            return self.dataset.state_dict()
        current = self._iterator if self._iterator is not None else (self._handed and self._handed())
        if current is None and self._dropped_state is not None:
            return copy.deepcopy(self._dropped_state)
        if current is None:
            current = self._iterator = self._get_iterator()
            self._initial_iter_for_state_dict = True
        if not hasattr(current, "state_dict"):
            raise TypeError(f"saving a DataLoader's state needs torchdata: {TORCHDATA_HINT}")
        return current.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores a state saved by ``state_dict`` (of this loader or a ``StatefulDataLoader``);
        the next ``iter()`` resumes from it."""
        if getattr(self.dataset, "__fastdata_iter__", None) is not None:
            if not hasattr(self.dataset, "load_state_dict"):
                raise TypeError(f"{type(self.dataset).__name__} keeps no iteration state to restore")
            self.dataset.load_state_dict(state)
            return
        self._iterator = None  # persistent workers start again, from the loaded state
        self._handed, self._dropped_state = None, None
        self._initial_iter_for_state_dict = False
        self.next_iter_state = state or None

    def _take_engine(self) -> BatchEngine:
        """The engine of a finished epoch if one is spare, else a new one.

        NOTE [ Buffers outlive the epoch ]
        An engine owns its ring of uint8 batches and its pool of output batches (NOTE [
        Output reuse ] in ``fastdata.loading.buffers``): a few hundred MB for ImageNet-sized
        batches, which the kernel zero-fills page by page on first touch. Building them
        for every epoch costs about 0.1 ms of page faults per sample on a 1,500-image
        epoch. So an iterator that ends (exhausted or dropped) stops its workers, as
        torch's iterator does, and hands its idle engine back to the loader, whose next
        iterator reuses the buffers. Only an idle engine is handed back and only one
        iterator takes it, so two iterators of the same loader never share buffers.
        """
        engine, self._spare_engine = self._spare_engine, None
        return engine if engine is not None else self._build_engine()

    def _build_engine(self) -> BatchEngine:
        """A batch engine for one iterator (kept across epochs with persistent workers)."""
        in_flight = max(2, self.prefetch_factor or 2)  # every worker helps with each batch
        return BatchEngine(
            self.compiled.plan,
            self.batch_size or getattr(self.batch_sampler, "batch_size", None) or 1,
            num_threads=self.num_workers,
            ring_size=in_flight + 1,
            device=self.device,
            memory_format=self.memory_format,
            on_error=self.on_error,
            timeout=self.timeout,
            stats=self._stats,
            processes=self._use_processes(),
        )

    def _use_processes(self) -> bool:
        """Threads or processes for the compiled path (NOTE [ Threads, not processes ])."""
        if self.worker_mode != "auto":
            return self.worker_mode == "processes" and self.batch_size is not None
        h, w, _ = self.compiled.plan.sample_shape
        small = h * w <= SMALL_IMAGE_PIXELS and not self.compiled.batch_stage
        return self.batch_size is not None and small


class _CompiledIter:
    """Iterator of the compiled path: the sampler's indices through the batch engine.

    Like torch's iterator, it draws a base seed from the loader's ``generator`` before the
    sampler draws its own, so the index order equals torch's for the same generator, and
    (with persistent workers) keeps that base seed across epochs.

    NOTE [ Resuming the compiled path ]
    A sample's augmentation is a pure function of the base seed, the epoch and its position
    in the epoch (NOTE [ Per-sample randomness ] in ``fastdata.loading.engine``), so the
    state is: the base seed, the epoch, the loader generator's state after the base seed
    was drawn, the index sampler's state at the start of the epoch (before its first draw)
    and the number of batches delivered. Restoring sets the generator and sampler back to
    the start of the epoch and replays the sampler (indices only, nothing is decoded) up to
    the next batch, whose samples get the positions they had. Batches the engine had
    prefetched are not in the state, so they are made again after a restore.
    """

    def __init__(self, loader: DataLoader, state: dict | None = None) -> None:
        self._loader = loader
        self._engine: BatchEngine | None = loader._take_engine()
        self._base_seed: int | None = None
        self._batches: Iterator | None = None
        self._finished = False
        self._reset(loader, state=state)

    def _reset(self, loader: DataLoader, first_iter: bool = False, state: dict | None = None) -> None:
        self._close()
        sampler = loader._index_sampler
        index_batches = iter(sampler)
        if state is None and self._base_seed is None:
            self._base_seed = int(
                torch.empty((), dtype=torch.int64).random_(generator=loader.generator).item()
            )
        if state is None:
            epoch, loader._epoch = loader._epoch, loader._epoch + 1
            self._start = {
                _GENERATOR_STATE: loader.generator.get_state() if loader.generator is not None else None,
                _INDEX_SAMPLER_STATE: sampler.state_dict() if is_stateful(sampler) else None,
                _SAMPLER_ITER_STATE: index_batches.state_dict() if is_stateful(index_batches) else None,
            }
            skip = 0
        else:
            self._check_state(state)
            epoch, self._base_seed = state[_EPOCH], state[_BASE_SEED]
            loader._epoch = epoch + 1
            self._start = {key: state[key] for key in _START_KEYS}
            index_batches = self._restore(loader, sampler, index_batches)
            skip = state[_NUM_YIELDED]
        self._epoch = epoch
        position = 0
        for _ in range(skip):  # replay the sampler up to the next batch
            position += len(next(index_batches))
        if state is not None and state[_ITERATOR_FINISHED]:
            for _ in index_batches:  # the generator draws of the whole epoch, as torch's
                pass
        self._num_yielded = skip
        self._finished = bool(state and state[_ITERATOR_FINISHED])
        self._len = len(loader)
        compiled = loader.compiled
        batches = self._engine.iterate(
            compiled.refs(index_batches, start=position), epoch=epoch, seed=self._base_seed
        )
        self._batches = None if self._finished else batches
        self._pin = loader.pin_memory and loader.device is None and torch.cuda.is_available()

    def _restore(self, loader: DataLoader, sampler: Any, index_batches: Iterator) -> Iterator:
        """Sets the generator and the index sampler back to the start of the saved epoch."""
        start = self._start
        if start[_GENERATOR_STATE] is not None and loader.generator is not None:
            loader.generator.set_state(start[_GENERATOR_STATE])
        if start[_INDEX_SAMPLER_STATE] is not None and is_stateful(sampler):
            sampler.load_state_dict(start[_INDEX_SAMPLER_STATE])
            index_batches = iter(sampler)
        if start[_SAMPLER_ITER_STATE] is not None and is_stateful(index_batches):
            index_batches.load_state_dict(start[_SAMPLER_ITER_STATE])
        return index_batches

    @staticmethod
    def _check_state(state: dict) -> None:
        missing = [key for key in (*_START_KEYS, _EPOCH, _BASE_SEED, _NUM_YIELDED) if key not in state]
        if missing:
            raise ValueError(
                f"this state was not saved by a DataLoader(compile=True) (missing {missing}); "
                "load it into a loader made with the same arguments as the one that saved it"
            )

    def state_dict(self) -> dict:
        """The position after the last batch delivered (NOTE [ Resuming the compiled path ])."""
        return {
            **self._start,
            _EPOCH: self._epoch,
            _BASE_SEED: self._base_seed,
            _NUM_YIELDED: self._num_yielded,
            _ITERATOR_FINISHED: self._finished,
        }

    def __iter__(self) -> _CompiledIter:
        return self

    def __len__(self) -> int:
        return self._len

    def __next__(self) -> list:
        if self._batches is None:
            raise StopIteration
        try:
            images, labels = next(self._batches)
        except StopIteration:
            self._batches = None
            self._finished = True
            if not self._loader.persistent_workers:
                self._hand_back()
            raise
        mix = self._loader.compiled.mix
        if mix is not None:  # a pure function of (seed, epoch, batch), like the samples' draws
            words = [self._base_seed & 0xFFFFFFFFFFFFFFFF, self._epoch, self._num_yielded, 0x6D6978]
            images, labels = mix(images, labels, np.random.default_rng(words))
        self._num_yielded += 1
        if self._pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        return [images, labels]

    def _close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def _hand_back(self) -> None:
        """Stops the workers and gives the idle engine to the loader (NOTE [ Buffers outlive the epoch ])."""
        self._close()
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
            if self._loader._spare_engine is None:
                self._loader._spare_engine = engine

    def __del__(self) -> None:
        if getattr(self, "_engine", None) is not None:
            self._hand_back()


class _Handed:
    """The iterator ``iter(loader)`` hands out when workers are not persistent.

    NOTE [ The iterator the user holds ]
    torch's DataLoader keeps no reference to a non-persistent iterator: when the user drops
    it (a ``for`` loop that ends or breaks), its workers stop at once, with whatever they
    had prefetched. torchdata's ``StatefulDataLoader`` keeps it, so that ``state_dict()``
    after a ``break`` still describes the broken-off epoch; its workers then go on
    prefetching and hold their memory until the next ``iter()``. This wrapper gives both:
    the loader keeps only a weak reference, and when the user drops the iterator the
    wrapper saves its state in the loader (``state_dict()`` returns it until the next
    ``iter()`` or ``load_state_dict``) and releases it, which stops its workers (or hands
    the compiled path's idle engine back) as torch's would.
    """

    def __init__(self, loader: DataLoader, inner: Any, token: int) -> None:
        self._loader = weakref.ref(loader)
        self._inner = inner
        self._token = token

    def __iter__(self) -> _Handed:
        return self

    def __next__(self) -> Any:
        return next(self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __del__(self) -> None:
        inner, self.__dict__["_inner"] = self.__dict__.get("_inner"), None
        loader = self._loader() if "_loader" in self.__dict__ else None
        if loader is None or inner is None or loader._handed_token != self._token:
            return
        if hasattr(inner, "state_dict"):
            try:
                loader._dropped_state = inner.state_dict()
            except Exception:  # a broken iterator has no state to keep
                loader._dropped_state = None


def _moved(batches: Iterator, device: torch.device) -> Iterator:
    """Moves every tensor of each batch to ``device`` (non-blocking from pinned memory)."""
    for batch in batches:
        yield _to(batch, device)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return type(obj)({k: _to(v, device) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    if isinstance(obj, tuple):
        moved = [_to(v, device) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    return obj
