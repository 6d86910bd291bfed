"""``fastdata show`` and ``fastdata stats``: pictures of what is in a set of shards.

``show`` renders a contact sheet of samples after the transforms the model would see,
each with its key and label. ``stats`` computes per-channel mean/std and pixel histograms
from decoded images, class counts and image sizes, plots them and prints the numbers that
``Normalize`` needs.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from fastdata.decode.images import decode_image
from fastdata.errors import FastdataError
from fastdata.loading.fields import IMAGE_FIELDS
from fastdata.shards import index as index_lib
from fastdata.shards.tario import iter_samples


def resolve_shards(shards: str | list[str]) -> tuple[list[str], dict | None]:
    """Shard URLs and the index (or None) from an index path or shard patterns."""
    urls, _, index = index_lib.resolve_shards(shards)
    return urls, index


def iter_images(urls: list[str], every: int = 1) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """Yields ``(key, HWC uint8 image, label or None)`` for every ``every``-th sample
    with an image (the others are not decoded)."""
    for n, sample in enumerate(iter_samples(urls)):
        field = next((f for f in IMAGE_FIELDS if f in sample), None)
        if field is None or n % every:
            continue
        data = sample[field]
        if field == "npy":
            image = np.load(io.BytesIO(data), allow_pickle=False)
            image = (
                np.repeat(image[:, :, :1], 3, axis=2)
                if image.ndim == 3 and image.shape[2] == 1
                else image
            )
        else:
            image = decode_image(data, url=sample["__url__"], key=sample["__key__"], field=field)
        label = int(sample["cls"]) if "cls" in sample else None
        yield sample["__key__"], image, label


def class_names(index: dict | None) -> list[str] | None:
    """Class names in label order, from the index's label map."""
    mapping = (index or {}).get("label_map")
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])] if mapping else None


def compute_stats(urls: list[str], limit: int) -> dict[str, Any]:
    """Statistics of the first ``limit`` images: mean/std per channel in [0, 1], pixel
    histograms, sizes and class counts (exact float64 sums)."""
    hist = np.zeros((3, 256), dtype=np.int64)
    widths, heights, counts = [], [], {}
    for n, (_, image, label) in enumerate(iter_images(urls)):
        if n >= limit:
            break
        for c in range(3):
            hist[c] += np.bincount(image[:, :, c].ravel(), minlength=256)
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not widths:
        raise FastdataError(f"no images found in {urls[0] if urls else 'the shards'}")
    values = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum(axis=1)
    mean = (hist * values).sum(axis=1) / total
    std = np.sqrt(np.maximum((hist * values**2).sum(axis=1) / total - mean**2, 0.0))
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "channel_hist": hist,
        "widths": widths,
        "heights": heights,
        "class_counts": dict(sorted(counts.items())),
        "images": len(widths),
    }


def _show_pipeline(size: int, augment: bool):
    from fastdata import transforms as T

    geometry = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if augment
        else [T.Resize(size), T.CenterCrop(size)]
    )
    return T.Compose(geometry)


def register(subparsers) -> None:
    """Adds ``fastdata show`` and ``fastdata stats``."""
    p = subparsers.add_parser("show", help="contact sheet of samples after the transforms")
    p.add_argument("shards", nargs="+", help="an index .json, or shard paths / brace patterns")
    p.add_argument("-n", type=int, default=32, help="samples to show (default 32)")
    p.add_argument("--size", type=int, default=160, help="output side of the crop (default 160)")
    p.add_argument(
        "--augment",
        action="store_true",
        help="RandomResizedCrop + flip instead of Resize + CenterCrop",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentations")
    p.add_argument("-o", "--out", default="contact_sheet.png", help="PNG to write")
    p.set_defaults(func=run_show)
    p = subparsers.add_parser(
        "stats", help="plot dataset statistics; print the mean/std for Normalize"
    )
    p.add_argument("shards", nargs="+", help="an index .json, or shard paths / brace patterns")
    p.add_argument("--limit", type=int, default=1000, help="images to decode (default 1000)")
    p.add_argument("-o", "--out", default="stats.png", help="PNG to write")
    p.set_defaults(func=run_stats)


def _target(args) -> str | list[str]:
    return args.shards[0] if len(args.shards) == 1 else args.shards


def run_show(args) -> int:
    """Runs ``fastdata show``."""
    from fastdata.pictures.plots import contact_sheet

    try:
        urls, index = resolve_shards(_target(args))
        pipeline, rng = _show_pipeline(args.size, args.augment), np.random.default_rng(args.seed)
        total = (index or {}).get("num_samples") or args.n
        keys, images, labels = [], [], []
        for key, image, label in iter_images(urls, every=max(1, total // args.n)):
            if len(keys) >= args.n:
                break
            keys.append(key)
            images.append(pipeline(image, rng))
            labels.append(-1 if label is None else label)
    except (FastdataError, ValueError) as exc:
        print(f"fastdata show: error: {exc}", file=sys.stderr)
        return 1
    title = f"{len(keys)} samples after {'RandomResizedCrop + flip' if args.augment else 'Resize + CenterCrop'}"
    contact_sheet(images, keys, labels, args.out, class_names=class_names(index), title=title)
    print(f"wrote {args.out}")
    return 0


def run_stats(args) -> int:
    """Runs ``fastdata stats``."""
    from fastdata.pictures.plots import plot_stats

    try:
        urls, index = resolve_shards(_target(args))
        stats = compute_stats(urls, args.limit)
    except (FastdataError, ValueError) as exc:
        print(f"fastdata stats: error: {exc}", file=sys.stderr)
        return 1
    names = class_names(index)
    if names:
        stats["class_counts"] = {names[k]: v for k, v in stats["class_counts"].items()}
    plot_stats(stats, args.out, title=f"Statistics of {stats['images']} images")
    mean = ", ".join(f"{v:.4f}" for v in stats["mean"])
    std = ", ".join(f"{v:.4f}" for v in stats["std"])
    print(f"images: {stats['images']}\nmean: [{mean}]\nstd:  [{std}]")
    print(f"Normalize(mean=[{mean}], std=[{std}])")
    print("class counts: " + json.dumps({str(k): v for k, v in stats["class_counts"].items()}))
    print(f"wrote {os.path.abspath(args.out)}")
    return 0
