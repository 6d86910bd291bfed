"""The user-facing transforms, named and parameterised like ``torchvision.transforms.v2``.

Each transform is a small declaration: its constructor validates and stores its
parameters, ``declare`` states the output size it produces from an input size (None when
it depends on the image), and ``apply`` acts on a symbolic :class:`Geometry` (sample
stage) or contributes to the batch stage. Pixels are only touched by the compiled plan
(:mod:`fastdata.transforms.plan`). Calling any transform on one sample runs a one-step
plan, so single-sample use inside a Dataset gives the loader's numbers.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from fastdata.transforms.geometry import PAD_MODES, Geometry, center_offset, resized_size, rrc_box
from fastdata.transforms.kernels import SUPPORTED_DTYPES
from fastdata.transforms.kernels.cpu import FILTER_BICUBIC, FILTER_BILINEAR, FILTER_NEAREST

INTERPOLATIONS = {"nearest": FILTER_NEAREST, "bilinear": FILTER_BILINEAR, "bicubic": FILTER_BICUBIC}

Size = tuple[int, int]


def _pair(size, name: str) -> Size:
    if isinstance(size, numbers.Integral):
        size = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 1:
        size = (int(size[0]), int(size[0]))
    if not (isinstance(size, Sequence) and len(size) == 2 and all(int(s) > 0 for s in size)):
        raise ValueError(f"{name}: size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _interpolation(value) -> int:
    name = getattr(value, "value", value)
    if not isinstance(name, str) or name.lower() not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {value!r}")
    return INTERPOLATIONS[name.lower()]


def _probability(p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return float(p)


class Transform:
    """Base class: a step of a pipeline. ``stage`` is ``"decode"``, ``"sample"`` or ``"batch"``."""

    stage = "sample"

    def declare(self, size: Size | None) -> Size | None:
        """Output ``(height, width)`` for an input of ``size`` (None: unknown before the data)."""
        return size

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        """Act on one sample's symbolic geometry, drawing any randomness from ``rng``."""

    def __call__(self, sample, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Apply to one sample (bytes, HWC uint8 array or CHW uint8 tensor); returns a CHW tensor."""
        from fastdata.transforms.plan import run_sequential

        return run_sequential([self], sample, rng)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class DecodeImage(Transform):
    """Decode JPEG/PNG/WebP bytes to RGB (a no-op on arrays and tensors).

    Args:
        reduce: let the JPEG decoder shrink by DCT scaling when the resize after it shrinks
            by 2x or more anyway (NOTE [ DCT scaling ] in :mod:`fastdata.decode.images`):
            faster, but no longer torchvision's numbers, so off by default.
    """

    stage = "decode"

    def __init__(self, reduce: bool = False) -> None:
        self.reduce = bool(reduce)

    def declare(self, size: Size | None) -> Size | None:
        return None


class Resize(Transform):
    """Resize the shorter side to ``size`` (an int) or to exactly ``(height, width)``.

    Args:
        size: int or ``[int]`` for the shorter side (long side truncated, as torchvision), or ``(h, w)``.
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"`` (or a torchvision InterpolationMode).
        max_size: cap on the longer side when ``size`` is the shorter side.
        antialias: widen the filter when shrinking (torchvision's default True).
    """

    def __init__(
        self, size, interpolation="bilinear", max_size: int | None = None, antialias: bool = True
    ) -> None:
        if isinstance(size, numbers.Integral):
            size = (int(size),)
        if not (
            isinstance(size, Sequence) and len(size) in (1, 2) and all(int(s) > 0 for s in size)
        ):
            raise ValueError(f"Resize: size must be a positive int, [int] or (h, w), got {size!r}")
        if max_size is not None and (len(size) != 1 or max_size <= size[0]):
            raise ValueError("Resize: max_size needs an int size smaller than max_size")
        self.size = tuple(int(s) for s in size)
        self.interpolation = _interpolation(interpolation)
        self.max_size = max_size
        self.antialias = bool(antialias)

    def declare(self, size: Size | None) -> Size | None:
        if len(self.size) == 2:
            return self.size
        return None if size is None else resized_size(*size, self.size, self.max_size)

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        h, w = resized_size(*geom.size(), self.size, self.max_size)
        geom.resize(h, w, self.interpolation, self.antialias)


class RandomResizedCrop(Transform):
    """Crop a random box (torchvision's area/aspect rule) and resize it to ``size``.

    Args:
        size: output size, int or ``(h, w)``.
        scale: range of the box area as a fraction of the image area.
        ratio: range of the box aspect ratio (width / height), sampled log-uniformly.
        interpolation: see :class:`Resize`.
        antialias: see :class:`Resize`.
    """

    def __init__(
        self,
        size,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        interpolation="bilinear",
        antialias=True,
    ):
        self.size = _pair(size, "RandomResizedCrop")
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1]):
            raise ValueError(
                f"RandomResizedCrop: scale must be (min, max) with 0 < min <= max, got {scale!r}"
            )
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(
                f"RandomResizedCrop: ratio must be (min, max) with 0 < min <= max, got {ratio!r}"
            )
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = _interpolation(interpolation)
        self.antialias = bool(antialias)

    def declare(self, size: Size | None) -> Size | None:
        return self.size

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        top, left, h, w = rrc_box(*geom.size(), self.scale, self.ratio, rng)
        geom.crop((top, left), (h, w))
        geom.resize(*self.size, self.interpolation, self.antialias)


class CenterCrop(Transform):
    """Crop the centre ``size`` (padding with zeros where the image is smaller), as torchvision."""

    def __init__(self, size) -> None:
        self.size = _pair(size, "CenterCrop")

    def declare(self, size: Size | None) -> Size | None:
        return self.size

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        h, w = geom.size()
        offsets = (center_offset(h, self.size[0]), center_offset(w, self.size[1]))
        geom.crop(offsets, self.size, "constant", (0, 0, 0))


class RandomCrop(Transform):
    """Pad, then crop a uniformly placed ``size`` box (CIFAR-style augmentation).

    Args:
        size: output size, int or ``(h, w)``.
        padding: int, ``(lr, tb)`` or ``(left, top, right, bottom)``.
        pad_if_needed: pad further when the image is smaller than ``size``.
        fill: constant fill value (int or per-channel triple) for ``padding_mode="constant"``.
        padding_mode: ``"constant"``, ``"edge"``, ``"reflect"`` or ``"symmetric"``.
    """

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        self.size = _pair(size, "RandomCrop")
        self.padding = _padding(padding)
        self.pad_if_needed = bool(pad_if_needed)
        self.fill = _fill(fill)
        if padding_mode not in PAD_MODES:
            raise ValueError(
                f"RandomCrop: padding_mode must be one of {PAD_MODES}, got {padding_mode!r}"
            )
        self.padding_mode = padding_mode

    def declare(self, size: Size | None) -> Size | None:
        return self.size

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        geom.crop(self.offsets(*geom.size(), rng), self.size, self.padding_mode, self.fill)

    def offsets(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """Draw the crop's ``(top, left)`` in the unpadded image (negative: in the padding)."""
        left, top, right, bottom = self.padding
        offsets = []
        for a, (before, after) in enumerate(((top, bottom), (left, right))):
            n = (height, width)[a]
            if self.pad_if_needed and n + before + after < self.size[a]:
                diff = self.size[a] - (n + before + after)
                before, after = before + diff, after + diff
            padded = n + before + after
            if padded < self.size[a]:
                raise ValueError(f"RandomCrop: crop {self.size} is larger than the padded image")
            offsets.append(
                int(rng.integers(0, padded - self.size[a] + 1)) - before
                if padded > self.size[a]
                else -before
            )
        return offsets[0], offsets[1]


def _padding(padding) -> tuple[int, int, int, int]:
    if padding is None:
        return (0, 0, 0, 0)
    if isinstance(padding, numbers.Integral):
        padding = [padding]
    p = [int(v) for v in padding]
    if len(p) == 1:
        p = p * 4
    elif len(p) == 2:
        p = [p[0], p[1], p[0], p[1]]
    if len(p) != 4 or min(p) < 0:
        raise ValueError(f"padding must be an int or 1, 2 or 4 non-negative ints, got {padding!r}")
    return tuple(p)


def _fill(fill) -> tuple[int, int, int]:
    values = [fill] * 3 if isinstance(fill, numbers.Number) else list(fill)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"fill must be a number or 3 numbers in [0, 255], got {fill!r}")
    return tuple(int(v) for v in values)


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p)

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        if rng.random() < self.p:
            geom.flip(1)


class RandomVerticalFlip(Transform):
    """Mirror top-bottom with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p)

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        if rng.random() < self.p:
            geom.flip(0)


class ColorJitter(Transform):
    """Random brightness, the colour augmentation fused into the resampling pass.

    The factor is uniform in ``[max(0, 1 - brightness), 1 + brightness]`` and multiplies
    the resampled value before rounding (torchvision truncates instead; within 1/255).
    Contrast, saturation and hue are not compiled.
    """

    def __init__(self, brightness: float = 0.0, contrast=0, saturation=0, hue=0) -> None:
        if any(v not in (0, None) for v in (contrast, saturation, hue)):
            raise ValueError(
                "ColorJitter: only brightness is compiled; contrast, saturation and hue must be 0"
            )
        if isinstance(brightness, Sequence):
            lo, hi = float(brightness[0]), float(brightness[1])
        else:
            lo, hi = max(0.0, 1.0 - float(brightness)), 1.0 + float(brightness)
        if not 0 <= lo <= hi:
            raise ValueError(f"ColorJitter: invalid brightness {brightness!r}")
        self.brightness = (lo, hi)

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None:
        if self.brightness != (1.0, 1.0):
            geom.gain *= float(rng.uniform(*self.brightness))


class ToDtype(Transform):
    """Convert to ``dtype``; with ``scale=True`` uint8 [0, 255] maps to [0, 1] (batch stage)."""

    stage = "batch"

    def __init__(self, dtype: torch.dtype, scale: bool = False) -> None:
        if dtype not in SUPPORTED_DTYPES and dtype != torch.uint8:
            raise ValueError(
                f"ToDtype: dtype must be uint8 or one of {SUPPORTED_DTYPES}, got {dtype!r}"
            )
        self.dtype = dtype
        self.scale = bool(scale)


class Normalize(Transform):
    """``(x - mean) / std`` per channel on a float image (batch stage, fused with ToDtype)."""

    stage = "batch"

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) not in (1, 3) or len(std) not in (1, 3):
            raise ValueError(
                f"Normalize: mean and std need 1 or 3 values, got {mean!r} and {std!r}"
            )
        if any(s == 0 for s in std):
            raise ValueError(f"Normalize: std must be non-zero, got {std!r}")
        self.mean, self.std = tuple(mean), tuple(std)


class RandomErasing(Transform):
    """Erase a random box of each image with probability ``p`` (on the float batch).

    The box follows torchvision's rule (ten attempts at an area fraction uniform in
    ``scale`` and a log-uniform aspect ratio ``h / w``; no erasing when none fits), drawn
    from the sample's generator. It runs after the batch's conversion with torch ops, on
    whatever device the batch is; ``value`` is taken in the space where the step stands
    in the pipeline (before or after ``Normalize``) and mapped to the output's.

    Args:
        p: probability of erasing an image.
        scale: range of the erased area as a fraction of the image.
        ratio: range of the erased box's aspect ratio.
        value: a number, one per channel, or ``"random"`` (standard normal noise).
    """

    stage = "batch"

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, inplace=False):
        self.p = _probability(p)
        if not (len(scale) == 2 and 0 <= scale[0] <= scale[1] <= 1):
            raise ValueError(f"RandomErasing: scale must be (min, max) in [0, 1], got {scale!r}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomErasing: ratio must be (min, max) > 0, got {ratio!r}")
        if isinstance(value, str) and value != "random":
            raise ValueError(f"RandomErasing: value must be a number, numbers or 'random', got {value!r}")
        if value is None or isinstance(value, str):
            self.value = None
        else:
            self.value = tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
            if len(self.value) not in (1, 3):
                raise ValueError(f"RandomErasing: value needs 1 or 3 numbers, got {value!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def box(self, rng: np.random.Generator, height: int, width: int):
        """``(top, left, h, w)`` of the box to erase, or None (not erased this time)."""
        if not rng.random() < self.p:
            return None
        area = height * width
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            erase_area = area * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
            h = int(round(np.sqrt(erase_area * aspect)))
            w = int(round(np.sqrt(erase_area / aspect)))
            if h < height and w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        return None
