"""Compiled image transforms with torchvision's names.

Usage::

    from fastdata import transforms as T
    pipeline = T.Compose([T.DecodeImage(), T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                          T.ToDtype(torch.float16, scale=True), T.Normalize(mean, std)])
    x = pipeline(jpeg_bytes)          # one sample -> CHW float16 tensor, inside any Dataset

    plan = pipeline.plan()            # what the loaders use
    batch = np.empty((n, *plan.sample_shape), np.uint8)
    for i, data in enumerate(samples):
        plan.sample_into(data, batch[i], rng_i)    # decode + crop/resize/flip, GIL released
    x = plan.finish(torch.from_numpy(batch), device="cuda")  # fused convert + normalise

See :mod:`fastdata.transforms.plan` for the two stages, :mod:`.geometry` for the
sampling rules and the crop/resize algebra, :mod:`.kernels` for the backends and
:func:`from_torchvision` for converting existing torchvision pipelines.
"""

from fastdata.transforms.augmix import AugMix
from fastdata.transforms.autoaugment import AutoAugment, RandAugment, TrivialAugmentWide
from fastdata.transforms.compose import Compose
from fastdata.transforms.geometry import PlanError
from fastdata.transforms.kernels import select_backend
from fastdata.transforms.mix import BatchMix, CutMix, MixUp
from fastdata.transforms.ops import (
    CenterCrop,
    ColorJitter,
    DecodeImage,
    Normalize,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Resize,
    ToDtype,
    Transform,
)
from fastdata.transforms.plan import Plan, compile_pipeline
from fastdata.transforms.tv import from_torchvision

__all__ = [
    "AugMix",
    "AutoAugment",
    "BatchMix",
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "CutMix",
    "DecodeImage",
    "MixUp",
    "Normalize",
    "Plan",
    "PlanError",
    "RandAugment",
    "RandomCrop",
    "RandomErasing",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomVerticalFlip",
    "Resize",
    "ToDtype",
    "Transform",
    "TrivialAugmentWide",
    "compile_pipeline",
    "from_torchvision",
    "select_backend",
]
