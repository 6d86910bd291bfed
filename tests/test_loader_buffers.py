"""The compiled loader's buffers outlive the epoch, but never reach two iterators at once.

NOTE [ Buffers outlive the epoch ] in ``fastdata.loading.dataloader``. The reference for every batch is
the uncompiled DataLoader over the same folder (a deterministic pipeline, so the values must
agree within the transforms' parity bounds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

from fastdata.loading.dataloader import DataLoader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PIPELINE = T.Compose([T.Resize((24, 20)), T.ToTensor(), T.Normalize(MEAN, STD)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> datasets.ImageFolder:
    """Two classes of random smooth PNGs (lossless, so both paths decode the same pixels)."""
    root = tmp_path_factory.mktemp("buffers")
    rng = np.random.default_rng()
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(11):
            coarse = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((int(rng.integers(30, 50)), 40), Image.BILINEAR)
            img.save(root / f"c{c}" / f"{i}.png")
    return datasets.ImageFolder(str(root), transform=PIPELINE)


def _reference(ds) -> list[torch.Tensor]:
    return [x for x, _ in torch.utils.data.DataLoader(ds, batch_size=4)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a - b).abs() <= 2.5 / 255 / min(STD)).all())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_kept_across_epochs_are_never_overwritten(dataset, num_workers):
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, compile=True)
    first = [x for x, _ in loader]  # every batch of epoch 1 kept alive
    snapshot = [x.clone() for x in first]
    second = [x for x, _ in loader]  # epoch 2 reuses the idle engine's buffers
    third = [x for x, _ in loader]
    reference = _reference(dataset)
    assert len(first) == len(reference) == 6  # 22 samples: 5 full batches and a short one
    for a, snap, b, c, ref in zip(first, snapshot, second, third, reference, strict=True):
        assert torch.equal(a, snap)
        assert torch.equal(a, b) and torch.equal(b, c)
        assert _close(a, ref)
    for a, b in zip(first, second, strict=True):
        assert a.data_ptr() != b.data_ptr()  # the consumer kept them, so none was reused


def test_dropped_batches_let_the_next_epoch_reuse_memory(dataset):
    loader = DataLoader(dataset, batch_size=4, num_workers=2, compile=True)
    ptrs = [{x.data_ptr() for x, _ in loader} for _ in range(3)]
    assert ptrs[1] & ptrs[2]  # outputs the consumer dropped are written again
    assert loader._spare_engine is not None  # an exhausted iterator hands its engine back


def test_two_live_iterators_get_their_own_buffers(dataset):
    loader = DataLoader(dataset, batch_size=4, num_workers=2, compile=True)
    list(loader)  # leaves a spare engine behind
    a, b = iter(loader), iter(loader)
    assert a._engine is not b._engine
    got_a, got_b = [], []
    for xa, xb in zip(a, b, strict=True):  # interleaved: shared buffers would mix their batches
        got_a.append(xa[0].clone())
        got_b.append(xb[0].clone())
    reference = _reference(dataset)
    assert len(got_a) == len(reference)
    for xa, xb, ref in zip(got_a, got_b, reference, strict=True):
        assert torch.equal(xa, xb) and _close(xa, ref)


def test_an_iterator_dropped_mid_epoch_hands_back_an_idle_engine(dataset):
    loader = DataLoader(dataset, batch_size=4, num_workers=2, compile=True)
    it = iter(loader)
    next(it)
    engine = it._engine
    del it  # the loader holds its current iterator (for state_dict) until the next iter()
    it = iter(loader)
    assert it._engine is engine  # the dropped iterator's engine, not a second one
    again = [x for x, _ in it]
    assert all(_close(x, ref) for x, ref in zip(again, _reference(dataset), strict=True))
