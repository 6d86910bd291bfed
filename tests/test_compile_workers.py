"""The compiled path's workers: timeouts that hold also in cleanup, files that never
return their bytes, and worker processes that end with their parent (as torch's do)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

from fastdata.errors import DecodeError
from fastdata.loading.dataloader import DataLoader
from fastdata.loading.engine import BatchEngine, SampleRef

PIPELINE = T.Compose([T.Resize((16, 16)), T.ToTensor()])


def _folder(root, n: int = 6, fifo: bool = False) -> str:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(n // 2):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    if fifo:
        os.mkfifo(root / "b" / "x.jpg")
    return str(root)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_fifo_in_the_folder_is_an_error_naming_it_not_a_hang(tmp_path, mode):
    ds = datasets.ImageFolder(_folder(tmp_path, fifo=True), transform=PIPELINE)
    # A generous timeout: the first batch may compile kernels. A FIFO gives a DecodeError
    # at once; a read that blocked would end in the timeout's RuntimeError instead.
    dl = DataLoader(ds, batch_size=4, compile=True, num_workers=2, worker_mode=mode, timeout=60)
    with pytest.raises(DecodeError, match=r"x\.jpg.*not a regular file"):
        list(dl)
    skip = DataLoader(ds, batch_size=7, compile=True, num_workers=2, worker_mode=mode,
                      timeout=60, on_error="skip")  # fmt: skip
    assert [len(y) for _, y in skip] == [7] and skip.stats.skipped == 1


class _StuckPlan:
    """A plan whose sample 3 blocks until released, as a read of a hung file would."""

    sample_shape = (2, 2, 3)

    def __init__(self) -> None:
        self.release = threading.Event()

    def sample_into(self, src, out, rng, **where) -> None:
        if src == b"stuck":
            self.release.wait(30)
        out[...] = 0

    def finish(self, batch, device=None, memory_format=None, out=None):
        return batch.clone()


@pytest.mark.parametrize("consume", ["iterate", "break"])
def test_timeout_holds_in_cleanup_and_names_the_stuck_sample(consume):
    plan = _StuckPlan()
    refs = [SampleRef(b"stuck" if i == 3 else b"ok", i, extra=i, key=f"k{i}", url="s.tar") for i in range(8)]
    engine = BatchEngine(plan, 4, num_threads=2, timeout=0.5)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"timed out after 0\.5 seconds.*s\.tar:k3"):
            batches = engine.iterate([refs[:4], refs[4:]])
            if consume == "break":
                next(batches)  # waits for batch 0, whose sample 3 never finishes
            list(batches)
        assert time.perf_counter() - t0 < 3
        # The engine dropped the stuck ring and pool: a new iteration works.
        assert len(list(engine.iterate([refs[4:]]))) == 1
    finally:
        plan.release.set()
        engine.close()


def test_timeout_covers_a_target_transform_that_never_returns(tmp_path):
    release = threading.Event()

    def hang(target):
        if target == 1:
            release.wait(30)
        return target

    ds = datasets.ImageFolder(_folder(tmp_path), transform=PIPELINE, target_transform=hang)
    dl = DataLoader(ds, batch_size=2, compile=True, num_workers=2, timeout=1)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="timed out after 1.*target_transform"):
            list(dl)
        assert time.perf_counter() - t0 < 5
    finally:
        release.set()


_ORPHAN_SCRIPT = """
import os, signal, sys, psutil
from torchvision import datasets, transforms as T
from fastdata.loading.dataloader import DataLoader
armed = False
def target(t):
    if armed:
        os._exit(3)
    return t
ds = datasets.ImageFolder(sys.argv[1], transform=T.Compose([T.RandomCrop(16), T.ToTensor()]),
                          target_transform=target)
dl = DataLoader(ds, batch_size=2, compile=True, num_workers=2, worker_mode="processes")
it = iter(dl)
next(it)
print(" ".join(str(c.pid) for c in psutil.Process().children()), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
armed = True
list(it)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_worker_processes_end_with_their_parent(tmp_path, how):
    (tmp_path / "data").mkdir()
    root = _folder(tmp_path / "data", n=20)
    script = tmp_path / "orphan.py"
    script.write_text(textwrap.dedent(_ORPHAN_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), root, how], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) >= 2, proc.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if not _gone(p)]
    for p in alive:
        os.kill(p, 9)
    assert alive == []
