"""Translate a torchvision pipeline (v1 ``transforms`` or ``transforms.v2``) into fastdata's.

Parameters are read from the torchvision objects, never assumed. Conversions to tensors
(``ToTensor``, ``PILToTensor``, ``ToImage``) have no counterpart: fastdata images are
uint8 until the batch stage, and ``ToTensor`` becomes ``ToDtype(float32, scale=True)``
(see NOTE [ Stage order ] in :mod:`fastdata.transforms.plan`). A ``DecodeImage`` step is
put first so the result also accepts encoded bytes.
"""

from __future__ import annotations

import torch

from fastdata.transforms import augmix, autoaugment, ops
from fastdata.transforms.compose import Compose

_PASS_THROUGH = {"PILToTensor", "ToImage", "ToPureTensor"}


def _fill(t) -> object:
    fill = getattr(t, "fill", 0)
    if isinstance(fill, dict):  # v2 may key the fill by type
        fill = fill.get("others", next(iter(fill.values()), 0))
    return 0 if fill is None else fill


def _convert_one(t) -> list:
    name = type(t).__name__
    if name in _PASS_THROUGH:
        return []
    if name == "ToTensor":
        return [ops.ToDtype(torch.float32, scale=True)]
    if name == "ConvertImageDtype":
        return [ops.ToDtype(t.dtype, scale=True)]
    if name == "ToDtype":
        if isinstance(t.dtype, dict):
            raise ValueError("per-type dtype dicts are not supported")
        return [ops.ToDtype(t.dtype, scale=t.scale)]
    if name == "Normalize":
        return [ops.Normalize(t.mean, t.std)]
    if name == "Resize":
        return [ops.Resize(t.size, t.interpolation, t.max_size, t.antialias is not False)]
    if name == "RandomResizedCrop":
        return [
            ops.RandomResizedCrop(
                t.size, t.scale, t.ratio, t.interpolation, t.antialias is not False
            )
        ]
    if name == "CenterCrop":
        return [ops.CenterCrop(t.size)]
    if name == "RandomCrop":
        return [ops.RandomCrop(t.size, t.padding, t.pad_if_needed, _fill(t), t.padding_mode)]
    if name == "RandomHorizontalFlip":
        return [ops.RandomHorizontalFlip(t.p)]
    if name == "RandomVerticalFlip":
        return [ops.RandomVerticalFlip(t.p)]
    if name == "ColorJitter":
        return [ops.ColorJitter(t.brightness or (1.0, 1.0), t.contrast, t.saturation, t.hue)]
    if name in _AUTO_AUGMENT:
        return [_AUTO_AUGMENT[name](t)]
    if name == "RandomErasing":
        value = getattr(t, "value", 0.0)
        return [ops.RandomErasing(t.p, t.scale, t.ratio, "random" if value is None else value)]
    if name == "ImageClassification":  # torchvision's eval preset, weights.transforms()
        return [
            ops.Resize(t.resize_size, t.interpolation, None, t.antialias is not False),
            ops.CenterCrop(t.crop_size),
            ops.ToDtype(torch.float32, scale=True),
            ops.Normalize(t.mean, t.std),
        ]
    raise ValueError(f"{name} has no compiled equivalent")


def _aa_fill(t) -> object:
    """The AutoAugment family's fill, keeping ``None`` (it differs from 0 with bilinear)."""
    fill = getattr(t, "fill", None)
    if isinstance(fill, dict):
        fill = fill.get("others", next(iter(fill.values()), None))
    return fill


def _policies(t) -> list:
    """The sub-policies of a torchvision AutoAugment (v2 keeps them in ``_policies``)."""
    return getattr(t, "_policies", None) or t.policies


_AUTO_AUGMENT = {
    "TrivialAugmentWide": lambda t: autoaugment.TrivialAugmentWide(
        t.num_magnitude_bins, t.interpolation, _aa_fill(t)
    ),
    "RandAugment": lambda t: autoaugment.RandAugment(
        t.num_ops, t.magnitude, t.num_magnitude_bins, t.interpolation, _aa_fill(t)
    ),
    "AutoAugment": lambda t: autoaugment.AutoAugment(_policies(t), t.interpolation, _aa_fill(t)),
    "AugMix": lambda t: augmix.AugMix(
        t.severity, t.mixture_width, t.chain_depth, t.alpha, t.all_ops, t.interpolation, _aa_fill(t)
    ),
}


def from_torchvision(pipeline) -> tuple[Compose, list[str]]:
    """Build the fastdata pipeline equivalent to a torchvision one.

    Args:
        pipeline: a torchvision ``Compose`` (v1 or v2), a list of transforms, or one transform.

    Returns:
        ``(compose, unsupported)``: the translated pipeline (starting with ``DecodeImage``)
        and a description of each step that could not be translated (and was left out).
        Callers that need exact equivalence should fall back when ``unsupported`` is not empty.
    """
    steps = getattr(pipeline, "transforms", pipeline)
    if not isinstance(steps, (list, tuple)):
        steps = [steps]
    out: list = [ops.DecodeImage()]
    unsupported: list[str] = []
    for t in steps:
        if type(t).__name__ == "Compose":
            inner, missing = from_torchvision(t)
            out.extend(inner.transforms[1:])
            unsupported.extend(missing)
            continue
        try:
            out.extend(_convert_one(t))
        except (ValueError, TypeError, AttributeError) as exc:
            unsupported.append(f"{t!r}: {exc}")
    return Compose(out), unsupported
