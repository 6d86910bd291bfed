"""The CPU output pool (NOTE [ Output reuse ] in ``fastdata.loading.buffers``)."""

from __future__ import annotations

import torch

from fastdata.loading.buffers import OutputPool


def make() -> torch.Tensor:
    return torch.empty((4, 3, 8, 8))


def test_reserve_fills_the_pool_once_and_only_free_batches_come_back():
    pool = OutputPool(3)
    pool.reserve(2, 4, make)
    pool.reserve(2, 4, make)  # already there
    assert len(pool.tensors) == 2
    first = pool.get(4)
    assert first is not None and any(first is t for t in pool.tensors)
    held = first[1:]  # a view keeps the storage
    del first
    second = pool.get(4)
    assert second is not None
    assert second.untyped_storage().data_ptr() != held.untyped_storage().data_ptr()
    kept = second
    del second
    assert pool.get(4) is None  # one held by a view, one by a name
    del held
    assert pool.get(4) is not None
    assert pool.get(5) is None and kept.shape[0] == 4


def test_a_full_pool_drops_a_held_batch_before_a_free_one():
    pool = OutputPool(2)
    pool.reserve(2, 4, make)
    held = pool.get(4)
    free_ptrs = {t.data_ptr() for t in pool.tensors if t is not held}
    pool.keep(make())  # the pool follows the new batch and lets the held one go
    assert not any(t is held for t in pool.tensors)
    assert free_ptrs <= {t.data_ptr() for t in pool.tensors}
    pool.keep(make())  # nothing held: the oldest goes
    assert len(pool.tensors) == 2 and not free_ptrs & {t.data_ptr() for t in pool.tensors}


def test_batches_in_flight_keep_to_a_byte_budget():
    """NOTE [ A byte budget for batches in flight ]: torch's count for small batches, fewer
    for large ones, never fewer than one per thread (and two)."""
    from fastdata.loading.buffers import INFLIGHT_BYTES, batches_ahead

    small = 512 * 3 * 32 * 32 * 4  # cifar, float32
    large = 256 * 3 * 224 * 224 * 4  # imagenet, float32: 154 MB
    assert batches_ahead(2, 2, small) == 4 and batches_ahead(4, 3, small) == 12
    assert batches_ahead(2, 2, large) == 2 and batches_ahead(8, 2, large) == 8
    assert batches_ahead(0, 2, large) == 2 and batches_ahead(2, 2, 0) == 4
    for workers in range(6):
        for size in (small, large, INFLIGHT_BYTES // 3):
            n = batches_ahead(workers, 2, size)
            assert n >= max(2, workers)
            assert n * size <= INFLIGHT_BYTES or n == max(2, workers)
