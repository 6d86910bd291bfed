"""Smoke run of benchmarks/bench_transforms.py so the suite cannot rot (speed is not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from fastdata import transforms as T


def _load():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_transforms.py"
    spec = importlib.util.spec_from_file_location("bench_transforms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_transforms_quick_run():
    results = _load().run(quick=True)
    assert {r["case"] for r in results["normalize"]} >= {
        "fastdata numba (fused table)",
        "torch copy_ + addcmul",
    }
    assert all(r["images_per_s"] > 0 for r in results["decode_crop"])
    assert {r["threads"] for r in results["decode_crop"]} == {1, 2}


def test_bench_baselines_compute_the_same_values():
    # The hand-written torch baseline must compute what the fused kernel computes.
    batch = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    plan = T.Compose(
        [T.ToDtype(torch.float32, scale=True), T.Normalize([0.4, 0.5, 0.6], [0.2, 0.3, 0.1])]
    ).plan()
    out = torch.empty((2, 3, 5, 7))
    out.copy_(batch.permute(0, 3, 1, 2))
    scale = (1 / (255 * torch.tensor([0.2, 0.3, 0.1]))).view(1, 3, 1, 1)
    bias = (
        (-torch.tensor([0.4, 0.5, 0.6]) / torch.tensor([0.2, 0.3, 0.1]))
        .view(1, 3, 1, 1)
        .expand_as(out)
    )
    torch.addcmul(bias, out, scale, out=out)
    np.testing.assert_allclose(plan.finish(batch).numpy(), out.numpy(), rtol=1e-5, atol=1e-5)
