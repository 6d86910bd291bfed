"""Parity with torchvision at every scale factor: antialiased Resize + CenterCrop of real
photographs (JPEG and PNG, landscape and portrait), shrunk by 1/2 down to 1/16, through the
plan that ``DataLoader(compile=True)`` and ``ShardDataset`` run.

torchvision resizes PIL images with Pillow's antialiased filters; the compiled plan must
stay within 2/255 of it on at least 99.9% of the values.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision import transforms as v1
from torchvision.transforms import v2

from fastdata.transforms import from_torchvision

PHOTOS = {"astronaut": skdata.astronaut, "chelsea": skdata.chelsea}
FACTORS = [1 / 2, 1 / 3, 1 / 5, 1 / 8, 1 / 11, 1 / 16]


def _encoded(name: str, portrait: bool, fmt: str) -> bytes:
    pixels = PHOTOS[name]()[..., :3]
    if portrait:
        pixels = np.ascontiguousarray(pixels.transpose(1, 0, 2))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_resize_center_crop_matches_torchvision_at_every_scale(name, portrait, fmt, api):
    data = _encoded(name, portrait, fmt)
    with Image.open(io.BytesIO(data)) as img:
        pil = img.convert("RGB")
    lib = v1 if api == "v1" else v2
    to_tensor = v1.PILToTensor() if api == "v1" else v2.PILToTensor()
    for factor in FACTORS:
        size = max(8, round(min(pil.size) * factor))
        crop = size - 1 if size % 2 == 0 else size  # odd crops: uneven margins
        tv = lib.Compose([lib.Resize(size), lib.CenterCrop(crop), to_tensor])
        ref = tv(pil).to(torch.int16)
        pipeline, unsupported = from_torchvision(tv)
        assert not unsupported
        plan = pipeline.plan()
        out = np.empty(plan.sample_shape, np.uint8)
        plan.sample_into(data, out, np.random.default_rng(0))
        got = torch.from_numpy(out).permute(2, 0, 1).to(torch.int16)
        diff = (got - ref).abs()
        share = (diff > 2).float().mean().item()
        assert share <= 1e-3, f"1/{1 / factor:.0f} ({size}px): {share:.4%} beyond 2/255, max {diff.max()}"
