"""Batch buffers of the batch engine: the ring of uint8 batches and the output pool.

``BatchRing`` holds the preallocated uint8 NHWC buffers the workers write samples into
(pinned for CUDA, shared memory for worker processes); ``OutputPool`` lets the batch stage
write into output batches the consumer has dropped. ``fastdata.loading.engine`` uses both.

NOTE [ Buffer reuse ]
The ring holds ``ring_size`` uint8 NHWC buffers, pinned when the batches go to CUDA. A
buffer is handed to the worker threads again only when (1) ``finish`` has returned for the
batch it held and (2) on CUDA, the event recorded on the current stream right after
``finish`` has completed, i.e. the non-blocking host-to-device copy that reads it is done.
The consumer never sees a ring buffer: if ``finish`` returns a tensor sharing its memory
(a plan with nothing to convert), the engine copies it first. This is the race SPDL
documents with the caching allocator: reusing a pinned buffer while an asynchronous copy
still reads it corrupts the batch silently.

NOTE [ Where the memory goes ]
Measured on the ImageNet-like benchmark (256 crops of 224x224 per batch, float32 output on
the CPU, 2 workers; PSS of the process tree, so pages shared with forked workers count
once), the compiled DataLoader's peak is made of:
- the imports: torch and torchvision alone are 470-520 MiB of PSS (torch's DataLoader
  pays the same), fastdata's transforms and Numba 35-40 MiB more;
- the ring: ``prefetch_factor + 1`` uint8 batches of 38.5 MB (115 MB);
- the float32 outputs: 154 MB each, two of them in the steady state: the batch the
  consumer still holds while it asks for the next one, and the one ``finish`` writes
  (the pool of NOTE [ Output reuse ] hands the consumer's previous batch back).
That is about 1,000-1,060 MiB against 1,100-1,200 for torch's DataLoader, whose four
prefetched float32 batches (616 MB) sit in shared memory. A short last batch used to add a
third float32 output (131 MB more at the end of every epoch); it now writes into a slice of
a pooled one. Half of torch's figure is below what the imports and one float32 batch take
on their own: going further means handing the consumer uint8 batches and converting on its
device, which the loaders do when ``device=`` is given. The shard batch path
(``fastdata.loading.batches``) writes its float32 outputs in the worker threads, so its
batches in flight are float32: with ``num_workers * prefetch`` of them, 770 MB at these
sizes (peak PSS about 1,500 MiB); under the byte budget below, two (1,104 MiB). Writing them as uint8 and converting in the consumer's thread, as the
compiled DataLoader does, brought that to 1,196 MiB but cost 13% of the throughput (1,188
against 1,367 samples/s, ``bench_stream.py --workloads imagenet --reps 3``, same machine,
one after the other): the workers' conversion reads a per-thread scratch batch that is
still in cache, the consumer's reads 38.5 MB back from memory. So the workers convert.

NOTE [ A byte budget for batches in flight ]
More batches in flight than threads making them only help where a batch is quick to make
and the consumer's pace varies. For large batches they cost memory and buy nothing: on the
ImageNet-like shards, 2 in flight instead of 4 gave the same throughput (1,285 against
1,291 samples/s, ``bench_stream.py --workloads imagenet --reps 3``) and 22% less peak PSS
(1,104 against 1,417 MiB), while on 6-25 MB batches (cifar, npy) 4 in flight were 6-7%
faster than 2. So ``batches_ahead`` keeps ``num_workers * prefetch`` batches in flight as
torch does, but no more than ``INFLIGHT_BYTES`` of output, and never fewer than one per
thread (and two).
"""

from __future__ import annotations

import mmap
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["INFLIGHT_BYTES", "BatchRing", "OutputPool", "batches_ahead", "shares_memory"]

INFLIGHT_BYTES = 256 << 20  # NOTE [ A byte budget for batches in flight ]


def batches_ahead(num_workers: int, prefetch: int, batch_bytes: int) -> int:
    """Batches to keep in flight (NOTE [ A byte budget for batches in flight ])."""
    wanted = max(2, num_workers * prefetch)
    if batch_bytes <= 0:
        return wanted
    return max(2, num_workers, min(wanted, INFLIGHT_BYTES // batch_bytes))


class BatchRing:
    """Preallocated uint8 NHWC batch buffers with their reuse events (NOTE [ Buffer reuse ]).

    Args:
        size: number of buffers.
        batch_size: samples per buffer (a buffer grows for a larger batch, unless shared).
        shape: ``(H, W, C)`` of a sample.
        pin: allocate pinned memory (batches going to CUDA).
        shared: allocate shared memory (forked worker processes write into it).
    """

    def __init__(
        self, size: int, batch_size: int, shape: tuple[int, int, int], pin: bool, shared: bool
    ) -> None:
        self.shape, self.pin, self.shared = shape, pin, shared
        self.tensors = [self._alloc(batch_size) for _ in range(size)]
        self.arrays = [t.numpy() for t in self.tensors]
        self.events: list[Any] = [None] * size
        self.free: deque[int] = deque(range(size))

    def _alloc(self, n: int) -> torch.Tensor:
        if self.shared:  # forked worker processes write here
            return torch.empty((n, *self.shape), dtype=torch.uint8).share_memory_()
        return torch.empty((n, *self.shape), dtype=torch.uint8, pin_memory=self.pin)

    def take(self, n: int) -> int:
        """A free buffer of at least ``n`` samples, once no copy still reads it."""
        slot = self.free.popleft()
        event = self.events[slot]
        if event is not None:
            event.synchronize()
            self.events[slot] = None
        if self.tensors[slot].shape[0] < n:  # a larger batch than any before: grow
            if self.shared:
                self.free.appendleft(slot)
                raise ValueError(
                    f"a batch of {n} samples does not fit the engine's {self.tensors[slot].shape[0]}"
                    "-sample buffers, which worker processes cannot grow; give batch_size"
                )
            self.tensors[slot] = self._alloc(n)
            self.arrays[slot] = self.tensors[slot].numpy()
        return slot

    def give_back(self, slot: int, on_cuda: bool) -> None:
        """Returns a buffer; on CUDA it is reusable once the work queued so far is done."""
        if on_cuda:
            event = torch.cuda.Event()
            event.record()
            self.events[slot] = event
        self.free.append(slot)


class OutputPool:
    """CPU output batches that ``finish`` may write again once the consumer dropped them.

    NOTE [ Output reuse ]
    A fresh 256x3x224x224 float32 batch is 154 MB; allocating it per batch costs ~100 ms of
    page faults on the benchmark machine, as much as normalising it. So the engine keeps up
    the last ``size`` batches it returned and hands one back to ``finish(out=...)`` only
    when nothing else refers to it: no Python reference but the pool's (``sys.getrefcount``)
    and no other tensor, view or NumPy array on its storage (the storage's use count). A
    consumer that keeps its batches simply gets fresh ones. The engine drops its own
    reference right after yielding. CUDA outputs are not pooled: the caching allocator
    already reuses device memory.

    When the pool is full, a new batch replaces one that somebody still holds (its memory
    lives on with its holder) rather than a free one, whose memory would be returned to
    the system and faulted in again by the next fresh batch. A caller whose batches vary
    in size can pool batches of the largest size and hand out their leading slices (the
    batch path does): a slice holds the storage, so the check above sees it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.tensors: list[torch.Tensor] = []

    def get(self, n: int) -> torch.Tensor | None:
        """A pooled batch of ``n`` samples nobody else refers to, or None."""
        for i in range(len(self.tensors)):
            if self.tensors[i].shape[0] == n and _unreferenced(self.tensors, i):
                return self.tensors[i]
        return None

    def batch(self, n: int, cap: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The first ``n`` samples of a pooled batch of ``cap`` nobody holds, else of ``make()``.

        Batches of every size come from full-size buffers, so a short last batch neither
        misses the pool nor pushes a full buffer out of it.
        """
        full = self.get(cap)
        if full is None:
            full = make()
            self.keep(full)
        return full if n == cap else full[:n]

    def reserve(self, count: int, n: int, make: Callable[[], torch.Tensor]) -> None:
        """Fills the pool up to ``count`` batches of ``n`` samples from ``make()``, faulted in now.

        For a caller that knows how many batches it has in flight: its first batches then
        find their memory mapped instead of page-faulting it while the clock runs.
        """
        have = sum(t.shape[0] == n for t in self.tensors)
        for _ in range(min(count, self.size) - have):
            out = make()
            _touch(out)
            self.keep(out)

    def keep(self, out: Any) -> None:
        """Remembers a batch ``finish`` returned (if it is a CPU tensor; see the NOTE for which goes)."""
        if not isinstance(out, torch.Tensor) or out.device.type != "cpu":
            return
        if self.size == 0 or any(t is out for t in self.tensors):
            return
        if len(self.tensors) >= self.size:
            held = [i for i in range(len(self.tensors)) if not _unreferenced(self.tensors, i)]
            del self.tensors[held[0] if held else 0]
        self.tensors.append(out)


def _touch(t: torch.Tensor) -> None:
    """Writes one byte of every page of ``t``'s memory (the kernel maps and zeroes each page)."""
    data = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
    data[:: mmap.PAGESIZE] = 0


def _unreferenced(tensors: list[torch.Tensor], i: int) -> bool:
    # getrefcount sees the list's reference and its own argument; the storage's use count
    # sees the tensor and the temporary storage object.
    if sys.getrefcount(tensors[i]) != 2:
        return False
    return torch._C._storage_Use_Count(tensors[i].untyped_storage()._cdata) == 2


def shares_memory(out: torch.Tensor, buf: torch.Tensor) -> bool:
    if out.device != buf.device:
        return False
    lo, size = buf.data_ptr(), buf.untyped_storage().nbytes()
    return lo <= out.data_ptr() < lo + size
