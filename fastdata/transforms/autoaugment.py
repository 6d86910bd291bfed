"""The AutoAugment family, declared: TrivialAugmentWide, RandAugment and AutoAugment
(AugMix is in :mod:`fastdata.transforms.augmix`).

Each is a ``"pixel"``-stage step: the plan applies it to the uint8 slot after the
geometric stage, drawing the operation and its magnitude from the sample's generator
(NOTE [ Per-sample randomness ] in :mod:`fastdata.loading.engine`), so the result does not
depend on the number of workers. The operation names, magnitude bins and signs are
torchvision's (``torchvision.transforms.v2._auto_augment``); the magnitudes are computed
with the same float32 ``torch.linspace`` so that they are the same numbers. The pixels
come from :mod:`fastdata.transforms.kernels.augment`; the geometric operations sample
with nearest (the default) or bilinear interpolation.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fastdata.transforms.kernels.augment import OPS, apply_op
from fastdata.transforms.ops import Transform, _fill

__all__ = ["AutoAugment", "RandAugment", "TrivialAugmentWide", "IMAGENET_POLICY"]

Table = dict[str, tuple[Callable[[int, int, int], list[float] | None], bool]]


def _linspace(hi: float, lo: float = 0.0) -> Callable[[int, int, int], list[float]]:
    return lambda bins, h, w: torch.linspace(lo, hi, bins).tolist()


def _posterize(top: int, span: int) -> Callable[[int, int, int], list[float]]:
    return lambda bins, h, w: (top - torch.arange(bins) / ((bins - 1) / span)).round().int().tolist()


def _none(bins: int, h: int, w: int) -> None:
    return None


def _space(shear: float, translate, rotate: float, enhance: float, posterize: int) -> Table:
    """One augmentation space: operation -> (magnitude bins of (bins, h, w), signed)."""
    return {
        "Identity": (_none, False),
        "ShearX": (_linspace(shear), True),
        "ShearY": (_linspace(shear), True),
        "TranslateX": (lambda bins, h, w: _linspace(translate(w))(bins, h, w), True),
        "TranslateY": (lambda bins, h, w: _linspace(translate(h))(bins, h, w), True),
        "Rotate": (_linspace(rotate), True),
        "Brightness": (_linspace(enhance), True),
        "Color": (_linspace(enhance), True),
        "Contrast": (_linspace(enhance), True),
        "Sharpness": (_linspace(enhance), True),
        "Posterize": (_posterize(8, posterize), False),
        "Solarize": (lambda bins, h, w: torch.linspace(1.0, 0.0, bins).tolist(), False),
        "AutoContrast": (_none, False),
        "Equalize": (_none, False),
    }


_RAND = _space(0.3, lambda n: 150.0 / 331.0 * n, 30.0, 0.9, 4)
_WIDE = _space(0.99, lambda n: 32.0, 135.0, 0.99, 6)
_AUTO = {k: v for k, v in _RAND.items() if k != "Identity"} | {"Invert": (_none, False)}

# torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of (operation, p, bin of 10).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)  # fmt: skip


def _interpolation(interpolation) -> str:
    """``"nearest"`` or ``"bilinear"`` from a string or a v1/v2 ``InterpolationMode``."""
    name = str(getattr(interpolation, "value", interpolation)).lower()
    if name not in ("nearest", "bilinear"):
        raise ValueError(
            f"only nearest and bilinear interpolation are compiled, got {interpolation!r}"
        )
    return name


def _fill_array(fill) -> np.ndarray:
    """The kernels' fill: ``(3,)`` uint8, or empty for ``None`` (torchvision's no-fill)."""
    return np.zeros(0, np.uint8) if fill is None else np.asarray(fill, np.uint8)


class _AutoAugmentBase(Transform):
    """A pixel-stage step: ``draw`` picks the operations, the plan applies them."""

    stage = "pixel"
    _space: Table = _RAND

    def __init__(self, interpolation="nearest", fill=None) -> None:
        self.interpolation = _interpolation(interpolation)
        # None stays None: with bilinear sampling torchvision's fill=None and fill=0 differ
        # (NOTE [ Bilinear geometric operations ] in fastdata.transforms.kernels.augment)
        self.fill = None if fill is None else _fill(fill)
        self._bins: dict[tuple, list[float] | None] = {}

    def magnitudes(self, op: str, bins: int, height: int, width: int) -> list[float] | None:
        """The magnitude bins of ``op`` for an image of ``height`` x ``width`` (cached)."""
        k = (op, bins, height, width)
        if k not in self._bins:
            self._bins[k] = self._space[op][0](bins, height, width)
        return self._bins[k]

    def _signed(self, op: str, magnitude: float, rng: np.random.Generator) -> float:
        # torchvision: ``if signed and torch.rand(()) <= 0.5: magnitude *= -1``
        if self._space[op][1] and rng.random() <= 0.5:
            return -magnitude
        return magnitude

    def draw(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[int, float]]:
        """The operations for one sample: ``[(index into OPS, signed magnitude), ...]``."""
        raise NotImplementedError

    def augment(self, img: np.ndarray, rng: np.random.Generator, scratch: np.ndarray) -> None:
        """Applies the drawn operations to ``img`` (C-contiguous ``(H, W, 3)`` uint8), in place."""
        fill, bilinear = _fill_array(self.fill), self.interpolation == "bilinear"
        for op, magnitude in self.draw(rng, *img.shape[:2]):
            apply_op(img, op, magnitude, fill, scratch, bilinear)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class TrivialAugmentWide(_AutoAugmentBase):
    """One operation per sample, uniformly chosen, with a uniformly chosen magnitude bin.

    Args:
        num_magnitude_bins: number of magnitude bins (torchvision's default 31).
        interpolation: ``"nearest"`` or ``"bilinear"`` (or an ``InterpolationMode``), for
            the geometric operations.
        fill: value (number or RGB triple) of pixels brought in by a geometric operation.
    """

    _space = _WIDE

    def __init__(self, num_magnitude_bins: int = 31, interpolation="nearest", fill=None) -> None:
        super().__init__(interpolation, fill)
        if num_magnitude_bins < 2:
            raise ValueError(f"TrivialAugmentWide: num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
        self.num_magnitude_bins = int(num_magnitude_bins)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[int, float]]:
        names = tuple(self._space)
        op = names[int(rng.integers(len(names)))]
        bins = self.magnitudes(op, self.num_magnitude_bins, height, width)
        magnitude = 0.0
        if bins is not None:
            magnitude = self._signed(op, float(bins[int(rng.integers(self.num_magnitude_bins))]), rng)
        return [(OPS.index(op), magnitude)]


class RandAugment(_AutoAugmentBase):
    """``num_ops`` uniformly chosen operations per sample, at the fixed ``magnitude`` bin.

    Args:
        num_ops: operations applied one after the other.
        magnitude: the bin index used for every operation.
        num_magnitude_bins: number of magnitude bins.
        interpolation: ``"nearest"`` or ``"bilinear"`` (or an ``InterpolationMode``), for
            the geometric operations.
        fill: see :class:`TrivialAugmentWide`.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
        interpolation="nearest", fill=None,
    ) -> None:  # fmt: skip
        super().__init__(interpolation, fill)
        if not isinstance(num_ops, numbers.Integral) or num_ops < 0:
            raise ValueError(f"RandAugment: num_ops must be a non-negative int, got {num_ops!r}")
        if not 0 <= int(magnitude) < int(num_magnitude_bins):
            raise ValueError(
                f"RandAugment: magnitude must be in [0, num_magnitude_bins), got {magnitude!r}"
            )
        self.num_ops, self.magnitude = int(num_ops), int(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[int, float]]:
        names, out = tuple(self._space), []
        for _ in range(self.num_ops):
            op = names[int(rng.integers(len(names)))]
            bins = self.magnitudes(op, self.num_magnitude_bins, height, width)
            magnitude = 0.0 if bins is None else self._signed(op, float(bins[self.magnitude]), rng)
            out.append((OPS.index(op), magnitude))
        return out


class AutoAugment(_AutoAugmentBase):
    """One uniformly chosen sub-policy per sample; each of its two operations applies with
    its own probability, at its own magnitude bin (of 10).

    Args:
        policies: the sub-policies, pairs of ``(operation, probability, bin or None)``;
            default torchvision's ImageNet policy (:data:`IMAGENET_POLICY`).
        interpolation: ``"nearest"`` or ``"bilinear"`` (or an ``InterpolationMode``), for
            the geometric operations.
        fill: see :class:`TrivialAugmentWide`.
    """

    _space = _AUTO

    def __init__(self, policies: Sequence = IMAGENET_POLICY, interpolation="nearest", fill=None) -> None:
        super().__init__(interpolation, fill)
        checked = []
        for policy in policies:
            for op, p, _ in policy:
                if op not in self._space or not 0.0 <= float(p) <= 1.0:
                    raise ValueError(f"AutoAugment: invalid sub-policy step {(op, p)!r}")
            checked.append(tuple((str(op), float(p), b) for op, p, b in policy))
        if not checked:
            raise ValueError("AutoAugment: policies must not be empty")
        self.policies = tuple(checked)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[int, float]]:
        policy = self.policies[int(rng.integers(len(self.policies)))]
        out = []
        for op, p, index in policy:
            if not rng.random() <= p:
                continue
            bins = self.magnitudes(op, 10, height, width)
            magnitude = 0.0 if bins is None else self._signed(op, float(bins[index]), rng)
            out.append((OPS.index(op), magnitude))
        return out
