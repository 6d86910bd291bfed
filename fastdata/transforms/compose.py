"""``Compose``: a pipeline of transforms, callable on one sample and compilable to a :class:`Plan`."""

from __future__ import annotations

import numpy as np
import torch

from fastdata.transforms.geometry import PlanError
from fastdata.transforms.ops import Transform
from fastdata.transforms.plan import Plan, default_rng, run_sequential


class Compose(Transform):
    """Chain transforms, like ``torchvision.transforms.v2.Compose``.

    Args:
        transforms: the steps; nested ``Compose`` objects are flattened.

    Raises:
        TypeError: a step is not a fastdata transform (convert torchvision pipelines with
            :func:`fastdata.transforms.from_torchvision`).
    """

    def __init__(self, transforms) -> None:
        flat: list[Transform] = []
        for t in transforms:
            if isinstance(t, Compose):
                flat.extend(t.transforms)
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TypeError(
                    f"{t!r} is not a fastdata transform; convert torchvision pipelines with "
                    "fastdata.transforms.from_torchvision"
                )
        self.transforms = flat

    def declare(self, size):
        for t in self.transforms:
            if t.stage != "batch":
                size = t.declare(size)
        return size

    def plan(self) -> Plan:
        """Compile into a per-sample stage and a batch stage (see :mod:`fastdata.transforms.plan`)."""
        return Plan(self.transforms)

    def __call__(self, sample, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Apply to one sample (bytes, HWC uint8 array or CHW uint8 tensor); returns a CHW tensor."""
        rng = default_rng() if rng is None else rng
        if isinstance(sample, torch.Tensor) and sample.is_floating_point():
            return run_sequential(self.transforms, sample, rng)
        try:
            plan = Plan(self.transforms)
        except PlanError:
            return run_sequential(self.transforms, sample, rng)
        state = rng.bit_generator.state
        try:
            return plan(sample, rng)
        except PlanError:  # e.g. padding before the resize: replay the same draws step by step
            rng.bit_generator.state = state
            return run_sequential(self.transforms, sample, rng)

    def __repr__(self) -> str:
        inner = "\n".join(f"    {t!r}," for t in self.transforms)
        return f"Compose([\n{inner}\n])"
