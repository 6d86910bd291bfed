"""A compiled plan as the batch maker sees it: raw pixels of the output's shape are copied."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

__all__ = ["PlanView", "compile_plan"]


class PlanView:
    """The batch maker's view of a plan: samples named in its errors, raw pixels copied
    when the plan has no per-sample step."""

    def __init__(self, plan: Any, shape: tuple[int, int, int]) -> None:
        self.plan, self.sample_shape = plan, shape
        sample_ops = [t for t in getattr(plan, "transforms", [None]) if getattr(t, "stage", "sample") in ("sample", "pixel")]
        self._copy_only = not sample_ops
        self._named = "url" in inspect.signature(plan.sample_into).parameters

    def sample_into(self, src: Any, out: np.ndarray, rng: np.random.Generator, *, url=None, key=None, field=None) -> None:
        if self._copy_only and isinstance(src, np.ndarray) and src.shape == out.shape:
            out[...] = src
        elif self._named:
            self.plan.sample_into(src, out, rng, url=url, key=key, field=field)
        else:
            self.plan.sample_into(src, out, rng)

    def finish(self, batch: torch.Tensor, **kwargs: Any) -> Any:
        return self.plan.finish(batch, **kwargs)


def compile_plan(transform: Any) -> Any:
    """A compiled plan from a fastdata pipeline, a plan, or a torchvision pipeline."""
    if hasattr(transform, "sample_into") and hasattr(transform, "finish"):
        return transform
    if hasattr(transform, "plan"):
        return transform.plan()
    from fastdata.transforms import from_torchvision

    pipeline, unsupported = from_torchvision(transform)
    if unsupported:
        raise ValueError(f"transform cannot be compiled: {', '.join(map(str, unsupported))}")
    return pipeline.plan()
