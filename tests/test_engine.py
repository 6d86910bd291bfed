"""The batch engine, driven by a tiny plan of the tests' own (raw pixel bytes, random flip)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdata.errors import DecodeError
from fastdata.loading.engine import BatchEngine, EngineStats, SampleRef, SampleRng

H, W, C = 4, 5, 3
MEAN = np.array([0.5, 0.4, 0.3])
STD = np.array([0.2, 0.25, 0.3])


class FlipPlan:
    """Raw HWC bytes -> slot, flipped left-right when the sample's rng says so."""

    sample_shape = (H, W, C)

    def __init__(self, delay: float = 0.0, fail_on: frozenset[int] = frozenset()) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def sample_into(self, src, out_slot, rng, **where) -> None:
        self.threads.add(threading.current_thread().name)
        pixels = np.frombuffer(bytes(src), dtype=np.uint8).reshape(H, W, C)
        if pixels[0, 0, 0] in self.fail_on:
            raise ValueError("corrupt sample")
        if self.delay:
            time.sleep(self.delay)
        out_slot[...] = pixels[:, ::-1] if rng.random() < 0.5 else pixels

    def finish(self, batch, device=None, memory_format=torch.contiguous_format, out=None):
        x = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255)
        mean = torch.tensor(MEAN, dtype=torch.float32).view(1, C, 1, 1)
        std = torch.tensor(STD, dtype=torch.float32).view(1, C, 1, 1)
        x = ((x - mean) / std).contiguous(memory_format=memory_format)
        if out is not None:
            self.reused = getattr(self, "reused", 0) + 1
            return out.copy_(x)
        return x if device is None else x.to(device)


def reference(images: list[np.ndarray], seed: int, epoch: int, indices: list[int]) -> np.ndarray:
    """float64 NumPy reference of FlipPlan, with the rng drawn the way the engine defines."""
    rngs = SampleRng(seed, epoch)
    out = []
    for img, idx in zip(images, indices, strict=True):
        flip = rngs.for_sample(idx).random() < 0.5
        px = img[:, ::-1] if flip else img
        out.append(((px / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out)


def make_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, (H, W, C), dtype=np.uint8) for _ in range(n)]
    for i, img in enumerate(imgs):
        img[0, 0, 0] = i % 256  # a tag to trigger failures on
    return imgs


def batches_of(imgs, batch_size, as_path=None):
    refs = [
        SampleRef(img.tobytes(), i, extra=i, key=f"k{i}", url="mem") for i, img in enumerate(imgs)
    ]
    return [refs[i : i + batch_size] for i in range(0, len(refs), batch_size)]


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_matches_reference_in_order(threads):
    imgs = make_images(23, seed=threads)
    with BatchEngine(FlipPlan(), 5, num_threads=threads, seed=7) as engine:
        out = list(engine.iterate(batches_of(imgs, 5), epoch=2))
    assert [len(x) for x, _ in out] == [5, 5, 5, 5, 3]
    images = torch.cat([x for x, _ in out]).double().numpy()
    labels = torch.cat([y for _, y in out])
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(23))
    np.testing.assert_allclose(images, reference(imgs, 7, 2, list(range(23))), atol=1e-5)
    assert engine.stats.batches == 5 and engine.stats.samples == 23


def test_randomness_is_independent_of_threads_and_varies_with_epoch():
    imgs = make_images(40, seed=1)
    runs = {}
    for threads, epoch in [(0, 0), (4, 0), (2, 1)]:
        with BatchEngine(FlipPlan(), 8, num_threads=threads, seed=3) as engine:
            runs[threads, epoch] = torch.cat(
                [x for x, _ in engine.iterate(batches_of(imgs, 8), epoch=epoch)]
            )
    assert torch.equal(runs[0, 0], runs[4, 0])
    assert not torch.equal(runs[0, 0], runs[2, 1])


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**63 - 1),
    st.integers(0, 1000),
    st.integers(0, 7),
    st.integers(0, 7),
    st.integers(0, 10**9),
)
def test_sample_rng_is_a_pure_function(seed, epoch, rank, worker, index):
    a = SampleRng(seed, epoch, rank, worker)
    first = a.for_sample(index).integers(0, 2**62, 4)
    a.for_sample(index + 1).integers(0, 2**62, 9)  # another sample's draws in between
    again = a.for_sample(index).integers(0, 2**62, 4)
    other = SampleRng(seed, epoch, rank, worker).for_sample(index).integers(0, 2**62, 4)
    assert np.array_equal(first, again) and np.array_equal(first, other)
    assert not np.array_equal(
        first, SampleRng(seed, epoch, rank, worker + 1).for_sample(index).integers(0, 2**62, 4)
    )


def test_rng_streams_of_neighbouring_samples_do_not_overlap():
    rngs = SampleRng(0)
    a = rngs.for_sample(5).integers(0, 2**63, 64).tolist()
    b = rngs.for_sample(6).integers(0, 2**63, 64).tolist()
    assert not set(a) & set(b)


def test_uses_several_threads():
    plan = FlipPlan(delay=0.002)
    with BatchEngine(plan, 16, num_threads=3) as engine:
        list(engine.iterate(batches_of(make_images(64, 0), 16)))
    assert len(plan.threads) > 1 and all(name.startswith("fastdata") for name in plan.threads)


def test_error_raise_names_the_sample_and_keeps_traceback():
    imgs = make_images(12, seed=2)
    with BatchEngine(FlipPlan(fail_on=frozenset({6})), 4, num_threads=2) as engine:
        it = engine.iterate(batches_of(imgs, 4))
        next(it)
        with pytest.raises(DecodeError, match="k6") as info:
            next(it)
    assert isinstance(info.value.__cause__, ValueError)
    frames = []
    tb = info.value.__cause__.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "sample_into" in frames


@pytest.mark.parametrize("policy", ["skip", "warn"])
def test_skip_keeps_batch_size_and_counts(policy):
    imgs = make_images(12, seed=3)
    bad = frozenset({1, 2, 7})
    stats = EngineStats()
    with BatchEngine(
        FlipPlan(fail_on=bad), 4, num_threads=2, on_error=policy, stats=stats, seed=1
    ) as engine:
        if policy == "warn":
            with pytest.warns(UserWarning, match="skipped a bad sample"):
                out = list(engine.iterate(batches_of(imgs, 4)))
        else:
            out = list(engine.iterate(batches_of(imgs, 4)))
    assert [len(x) for x, _ in out] == [4, 4, 4]
    labels = torch.cat([y for _, y in out]).tolist()
    assert not set(labels) & bad
    assert labels == [0, 3, 3, 3, 4, 5, 6, 4, 8, 9, 10, 11]  # next good sample, cyclically
    assert stats.skipped == 3 and stats.skipped_keys == ["mem:k1", "mem:k2", "mem:k7"]
    images = torch.cat([x for x, _ in out])
    assert torch.equal(images[1], images[3]) and torch.equal(images[7], images[4])


def test_a_batch_with_no_good_sample_raises_under_skip():
    imgs = make_images(4, seed=4)
    with BatchEngine(FlipPlan(fail_on=frozenset(range(4))), 4, on_error="skip") as engine:
        with pytest.raises(DecodeError, match="every sample"):
            list(engine.iterate(batches_of(imgs, 4)))


def test_timeout_raises_instead_of_hanging():
    with BatchEngine(FlipPlan(delay=1.5), 2, num_threads=1, timeout=0.2) as engine:
        with pytest.raises(RuntimeError, match="timed out after 0.2 seconds"):
            list(engine.iterate(batches_of(make_images(2, 5), 2)))


def test_outputs_never_alias_the_ring():
    """The consumer keeps every batch; later batches must not overwrite earlier ones."""

    class Identity(FlipPlan):
        def finish(self, batch, device=None, memory_format=torch.contiguous_format, out=None):
            return batch  # shares the ring's memory: the engine must copy

    imgs = make_images(30, seed=6)
    with BatchEngine(Identity(), 3, num_threads=2, ring_size=2) as engine:
        kept = [x for x, _ in engine.iterate(batches_of(imgs, 3))]
    rngs = SampleRng(0)
    for i, img in enumerate(imgs):
        flip = rngs.for_sample(i).random() < 0.5
        assert np.array_equal(kept[i // 3][i % 3].numpy(), img[:, ::-1] if flip else img)


def test_paths_are_read_in_the_workers(tmp_path):
    imgs = make_images(6, seed=7)
    refs = []
    for i, img in enumerate(imgs):
        path = tmp_path / f"{i}.raw"
        path.write_bytes(img.tobytes())
        refs.append(SampleRef(path, i, extra=i))
    refs.append(SampleRef(tmp_path / "missing.raw", 6, extra=6))
    with BatchEngine(FlipPlan(), 7, num_threads=2) as engine:
        with pytest.raises(DecodeError, match="missing.raw"):
            list(engine.iterate([refs]))
        images, labels = next(engine.iterate([refs[:6]]))
    np.testing.assert_allclose(
        images.double().numpy(), reference(imgs, 0, 0, list(range(6))), atol=1e-5
    )


def test_early_close_and_restart_reuse_the_ring():
    imgs = make_images(40, seed=8)
    with BatchEngine(FlipPlan(delay=0.001), 4, num_threads=2, ring_size=3) as engine:
        it = engine.iterate(batches_of(imgs, 4))
        next(it)
        it.close()  # abandons batches in flight
        out = list(engine.iterate(batches_of(imgs, 4)))
        assert len(out) == 10 and len(engine._ring.free) == 3


def test_larger_batch_grows_its_buffer():
    imgs = make_images(10, seed=9)
    batches = [
        [SampleRef(img.tobytes(), i, extra=i) for i, img in enumerate(imgs[:2])],
        [SampleRef(img.tobytes(), i + 2, extra=i) for i, img in enumerate(imgs[2:])],
    ]
    with BatchEngine(FlipPlan(), 2, num_threads=1) as engine:
        sizes = [len(x) for x, _ in engine.iterate(batches)]
    assert sizes == [2, 8]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_memory_format_is_passed_to_finish(memory_format):
    with BatchEngine(FlipPlan(), 4, memory_format=memory_format) as engine:
        x, _ = next(engine.iterate(batches_of(make_images(4, 10), 4)))
    assert x.is_contiguous(memory_format=memory_format)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="on_error"):
        BatchEngine(FlipPlan(), 4, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        BatchEngine(FlipPlan(), 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_buffers_are_not_reused_while_copied():
    """Large batches and a slow consumer stream: a reused pinned buffer would corrupt batches."""

    class Big(FlipPlan):
        sample_shape = (256, 256, 3)

        def sample_into(self, src, out_slot, rng, **where):
            out_slot[...] = src

        def finish(self, batch, device=None, memory_format=torch.contiguous_format, out=None):
            x = batch.to(device, non_blocking=True)
            torch.cuda._sleep(5_000_000)  # keep the stream busy after the copy is queued
            return x.permute(0, 3, 1, 2).float()

    batches = [
        [
            SampleRef(np.full((256, 256, 3), b * 4 + i, np.uint8), b * 4 + i, extra=b)
            for i in range(4)
        ]
        for b in range(12)
    ]
    with BatchEngine(Big(), 4, num_threads=2, ring_size=2, device="cuda") as engine:
        for images, labels in engine.iterate(batches):
            b = int(labels[0])
            expect = torch.arange(b * 4, b * 4 + 4, device="cuda").float().view(4, 1, 1, 1)
            assert torch.equal(images, expect.expand_as(images))


def test_dropped_outputs_are_reused_and_kept_ones_never_overwritten():
    imgs = make_images(60, seed=11)
    plan = FlipPlan()
    with BatchEngine(plan, 4, num_threads=2) as engine:
        kept, views, arrays = [], [], []
        for b, (x, y) in enumerate(engine.iterate(batches_of(imgs, 4))):
            if b % 5 == 0:
                kept.append((x, y))  # the whole batch
            elif b % 5 == 1:
                views.append((x[1:3], y[1:3]))  # a view keeps the storage alive
            elif b % 5 == 2:
                arrays.append((x.numpy(), y))
    assert plan.reused > 0
    expect = torch.from_numpy(reference(imgs, 0, 0, list(range(60)))).float()
    for x, y in kept + views:
        torch.testing.assert_close(x, expect[y], atol=1e-5, rtol=0)
    for a, y in arrays:
        np.testing.assert_allclose(a, expect[y].numpy(), atol=1e-5)


def test_a_short_last_batch_writes_into_a_pooled_full_batch():
    """The end of an epoch must not fault in a fresh output beside the pooled ones."""
    imgs = make_images(22, seed=12)  # batches of 4, 4, 4, 4, 4, 2
    plan = FlipPlan()
    with BatchEngine(plan, 4, num_threads=2) as engine:
        seen = []
        for x, y in engine.iterate(batches_of(imgs, 4)):
            seen.append((x.untyped_storage().data_ptr(), x.clone(), y))
            del x
    pooled = {ptr for ptr, _, y in seen[:-1]}
    assert seen[-1][0] in pooled and plan.reused == len(seen) - 1  # all but the first batch
    expect = torch.from_numpy(reference(imgs, 0, 0, list(range(22)))).float()
    for _, x, y in seen:
        torch.testing.assert_close(x, expect[y], atol=1e-5, rtol=0)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_worker_processes_give_the_same_batches_and_errors(on_error):
    imgs = make_images(30, seed=12)
    plan = FlipPlan(fail_on=frozenset({4}))
    with BatchEngine(plan, 8, num_threads=2, processes=True, on_error=on_error, seed=5) as engine:
        assert engine.processes
        if on_error == "raise":
            with pytest.raises(
                DecodeError, match="(?s)k4.*Traceback in the worker process.*sample_into"
            ):
                list(engine.iterate(batches_of(imgs, 8)))
            return
        out = list(engine.iterate(batches_of(imgs, 8), epoch=1))
    assert not plan.threads  # the work ran in the worker processes
    with BatchEngine(plan, 8, num_threads=2, on_error="skip", seed=5) as engine:
        threads = list(engine.iterate(batches_of(imgs, 8), epoch=1))
    assert engine.stats.skipped == 1
    for (x, y), (u, v) in zip(out, threads, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_a_killed_worker_process_ends_the_iteration():
    class Suicide(FlipPlan):
        def sample_into(self, src, out_slot, rng, **where):
            os._exit(3)

    with BatchEngine(Suicide(), 4, num_threads=1, processes=True) as engine:
        with pytest.raises(RuntimeError, match="worker process"):
            list(engine.iterate(batches_of(make_images(8, 13), 4)))


def test_worker_processes_cannot_grow_buffers():
    with BatchEngine(FlipPlan(), 2, num_threads=1, processes=True) as engine:
        with pytest.raises(ValueError, match="give batch_size"):
            list(engine.iterate(batches_of(make_images(8, 14), 4)))


class ChunkPlan(FlipPlan):
    """FlipPlan with a batch-level stage that takes the samples whose tag is even."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[int] = []

    def chunk_into(self, sources, indices, key, out):
        self.chunks.append(len(sources))
        done = np.zeros(len(sources), bool)
        for i, src in enumerate(sources):
            if isinstance(src, bytes) and src[0] % 2 == 0:
                pixels = np.frombuffer(src, np.uint8).reshape(H, W, C)
                flip = (int(key[0]) + indices[i]) % 2 == 1  # some pure function of key/index
                out[i] = pixels[::-1] if flip else pixels
                done[i] = True
        return done


@pytest.mark.parametrize("processes", [False, True])
def test_batch_level_stage_takes_what_it_can_and_the_rest_goes_per_sample(tmp_path, processes):
    imgs = make_images(20, seed=11)
    refs = []
    for i, img in enumerate(imgs):
        path = tmp_path / f"{i}.raw"
        path.write_bytes(img.tobytes())
        refs.append(SampleRef(path, i, extra=i))
    plan = ChunkPlan()
    with BatchEngine(plan, 10, num_threads=2, seed=5, processes=processes) as engine:
        images = torch.cat([x for x, _ in engine.iterate([refs[:10], refs[10:]])])
        with pytest.raises(DecodeError, match="gone.raw"):
            list(engine.iterate([[*refs[:3], SampleRef(tmp_path / "gone.raw", 3)]]))
    key = SampleRng(5).key
    expected = reference(imgs, 5, 0, list(range(20)))
    for i, img in enumerate(imgs):
        if i % 2 == 0:  # the stage's samples
            px = img[::-1] if (int(key[0]) + i) % 2 == 1 else img
            expected[i] = ((px / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(images.double().numpy(), expected, atol=1e-5)
    if not processes:
        assert sum(plan.chunks) >= 20 and max(plan.chunks) < 10  # chunks, not single samples
