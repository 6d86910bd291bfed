"""Tiny shard sets for the streaming tests, written with fastdata's own writer."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import torch
from PIL import Image

from fastdata.shards.index import write_index
from fastdata.shards.writer import ShardWriter


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_image_shards(
    folder: str, n: int, per_shard: int, *, seed: int = 0, size: int = 12, raw: bool = False,
    index: bool = True, extra: bool = False,
) -> tuple[str, dict[str, np.ndarray]]:  # fmt: skip
    """Writes ``n`` random images (+ ``.cls``) in shards of ``per_shard``; returns (pattern, pixels by key).

    ``extra`` adds ``.json``, ``.txt`` and variable-length ``tokens.npy`` fields.
    """
    rng = np.random.default_rng(seed)
    pixels = {}
    pattern = os.path.join(folder, "train-%06d.tar")
    with ShardWriter(pattern, maxcount=per_shard, index=index) as sink:
        for i in range(n):
            key = f"s{i:05d}"
            img = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)
            pixels[key] = img
            sample = {"__key__": key, "cls": i % 7}
            sample["npy" if raw else "png"] = img if raw else png_bytes(img)
            if extra:
                sample["json"] = {"i": i, "name": key}
                sample["txt"] = f"caption {i}"
                sample["tokens.npy"] = np.arange(i % 5 + 1, dtype=np.int32) + i
            sink.write(sample)
    if index:
        write_index(os.path.join(folder, "train.index.json"), {"shards": [s.to_dict() for s in sink.shards]})
    last = len(sink.shards) - 1
    return os.path.join(folder, f"train-{{000000..{last:06d}}}.tar"), pixels


def digest(batch) -> str:
    """A content hash of a batch (tensors, lists, nested)."""
    h = hashlib.sha256()
    _feed(h, batch)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(str((obj.dtype, tuple(obj.shape))).encode())
        h.update(obj.contiguous().cpu().numpy().tobytes())
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _feed(h, v)
    else:
        h.update(repr(obj).encode())
