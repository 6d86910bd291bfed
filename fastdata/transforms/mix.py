"""MixUp and CutMix on a finished batch, as torchvision's ``v2.MixUp`` / ``v2.CutMix``.

``BatchMix`` holds the candidates (each a MixUp or CutMix with its ``alpha``) and their
probabilities, as ``v2.RandomChoice([MixUp(...), CutMix(...)])`` does; ``mix(images,
labels, rng)`` picks one and applies it with torch ops, so it runs where the batch is.
Pairs are consecutive samples (the batch rolled by one), the labels become one-hot
``float32`` rows of ``num_classes`` mixed with the same weight, as in torchvision:

- MixUp: ``lam ~ Beta(alpha, alpha)``; ``images = lam * images + (1 - lam) * rolled``.
- CutMix: ``lam ~ Beta(alpha, alpha)``; a box of half-sides ``0.5 * sqrt(1 - lam)`` times
  the image's sides, centred on a uniformly drawn pixel and clipped to the image, is
  pasted from the rolled batch; the labels mix with the pasted share of the area.

The draws come from the ``rng`` the caller passes (a pure function of the seed, the epoch
and the batch's position), not from torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BatchMix", "MixUp", "CutMix"]


class MixUp:
    """Declares MixUp with Beta(``alpha``, ``alpha``) weights (torchvision's ``v2.MixUp``)."""

    kind = "MixUp"

    def __init__(self, alpha: float = 1.0) -> None:
        if not float(alpha) > 0:
            raise ValueError(f"MixUp: alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def params(self, rng: np.random.Generator, height: int, width: int) -> tuple[float, tuple]:
        """``(label weight, box or ())`` for one batch."""
        return float(rng.beta(self.alpha, self.alpha)), ()

    def __repr__(self) -> str:
        return f"{self.kind}(alpha={self.alpha})"


class CutMix(MixUp):
    """Declares CutMix with Beta(``alpha``, ``alpha``) areas (torchvision's ``v2.CutMix``)."""

    kind = "CutMix"

    def params(self, rng: np.random.Generator, height: int, width: int) -> tuple[float, tuple]:
        lam = float(rng.beta(self.alpha, self.alpha))
        rx, ry = int(rng.integers(width)), int(rng.integers(height))
        r = 0.5 * math.sqrt(1.0 - lam)
        rw, rh = int(r * width), int(r * height)
        x1, y1 = max(rx - rw, 0), max(ry - rh, 0)
        x2, y2 = min(rx + rw, width), min(ry + rh, height)
        return 1.0 - (x2 - x1) * (y2 - y1) / (width * height), (x1, y1, x2, y2)


class BatchMix:
    """One of several MixUp/CutMix steps per batch (``v2.RandomChoice`` of them).

    Args:
        choices: the MixUp/CutMix declarations.
        num_classes: length of the one-hot label rows.
        p: probability of each choice (default uniform); normalised to sum 1.
    """

    def __init__(self, choices: Sequence[MixUp], num_classes: int, p: Sequence[float] | None = None):
        if not choices:
            raise ValueError("BatchMix needs at least one MixUp or CutMix")
        if not int(num_classes) > 0:
            raise ValueError(f"BatchMix: num_classes must be a positive int, got {num_classes!r}")
        weights = [1.0] * len(choices) if p is None else [float(v) for v in p]
        if len(weights) != len(choices) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"BatchMix: p must hold one non-negative weight per choice, got {p!r}")
        self.choices = list(choices)
        self.num_classes = int(num_classes)
        self.p = [w / sum(weights) for w in weights]

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixes a ``(N, C, H, W)`` float batch and its ``(N,)`` integer labels."""
        if labels.ndim != 1:
            raise ValueError(f"MixUp/CutMix take (N,) class indices, got labels of shape {tuple(labels.shape)}")
        step = self.choices[int(rng.choice(len(self.choices), p=self.p))] if len(self.choices) > 1 else self.choices[0]
        lam, box = step.params(rng, images.shape[-2], images.shape[-1])
        if box:
            _paste_rolled(images, box)
        else:
            _mix_rolled(images, lam)
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        return images, onehot.roll(1, 0).mul_(1.0 - lam).add_(onehot.mul(lam))

    def __repr__(self) -> str:
        return f"BatchMix({self.choices}, num_classes={self.num_classes})"


def _mix_rolled(images: torch.Tensor, lam: float) -> None:
    """``images = lam * images + (1 - lam) * images.roll(1, 0)``, in place.

    NOTE [ Mixing in place ]
    torchvision's form allocates and writes two copies of the batch (the roll and the
    product), about 150 MB each for 256 ImageNet crops in float32. Going from the last
    sample down to the first, sample ``i`` mixes with ``i - 1`` while that one is still
    unmixed, so one saved sample (the last, which the first mixes with) is all the extra
    memory needed, and the batch is read and written once.
    """
    last = images[-1].clone()
    for i in range(images.shape[0] - 1, 0, -1):
        images[i].mul_(lam).add_(images[i - 1], alpha=1.0 - lam)
    images[0].mul_(lam).add_(last, alpha=1.0 - lam)


def _paste_rolled(images: torch.Tensor, box: tuple[int, int, int, int]) -> None:
    """Pastes each sample's box from the previous sample (cyclically), in place."""
    x1, y1, x2, y2 = box
    patch = images[..., y1:y2, x1:x2].clone()
    images[1:, ..., y1:y2, x1:x2] = patch[:-1]
    images[:1, ..., y1:y2, x1:x2] = patch[-1:]
