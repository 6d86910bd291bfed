"""``fastdata show`` and ``fastdata stats``: pictures of what is in a set of shards.

``show`` renders a contact sheet of samples after the transforms the model would see,
each with its key and label. ``stats`` computes per-channel mean/std and pixel histograms
from decoded images, class counts and image sizes, plots them and prints the numbers that
``Normalize`` needs.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fastdata.decode.images import decode_image
from fastdata.errors import FastdataError
from fastdata.loading.fields import IMAGE_FIELDS
from fastdata.shards import index as index_lib
from fastdata.shards.tario import iter_samples


def resolve_shards(shards: str | list[str]) -> tuple[list[str], dict | None]:
    """Shard URLs and the index (or None) from an index path or shard patterns."""
    urls, _, index = index_lib.resolve_shards(shards)
    return urls, index


def iter_images(
    urls: list[str], every: int = 1, picks: Callable[[int], bool] | None = None
) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """Yields ``(key, HWC uint8 image, label or None)`` for every ``every``-th sample
    with an image, or for the samples whose position ``picks`` accepts (the others are
    not decoded)."""
    picks = picks or (lambda n: n % every == 0)
    for n, sample in enumerate(iter_samples(urls)):
        field = next((f for f in IMAGE_FIELDS if f in sample), None)
        if field is None or not picks(n):
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


def count_samples(urls: list[str], index: dict | None) -> int:
    """The number of samples: the index's count, else one pass over the tar headers."""
    if index and index.get("num_samples") is not None:
        return int(index["num_samples"])
    return sum(1 for _ in iter_samples(urls, fields=set()))


def no_images_error(urls: list[str]) -> FastdataError:
    """The error for shards without images, naming the fields they do have."""
    fields = sorted({f for s in itertools.islice(iter_samples(urls), 100) for f in s
                     if not f.startswith("__")})  # fmt: skip
    where = urls[0] if len(urls) == 1 else f"{urls[0]} and {len(urls) - 1} more shards"
    if not fields:
        return FastdataError(f"{where}: no samples")
    return FastdataError(
        f"{where}: no images (fields {', '.join(fields)}; images are"
        f" {', '.join(IMAGE_FIELDS)}); show and stats draw images only"
    )


def class_names(index: dict | None) -> list[str] | None:
    """Class names in label order, from the index's label map."""
    mapping = (index or {}).get("label_map")
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])] if mapping else None


def compute_stats(
    urls: list[str], limit: int, total: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Statistics of at most ``limit`` images spread evenly over all ``total`` samples (in
    every shard, not the first ones): mean/std per channel in [0, 1], pixel histograms,
    sizes and class counts (exact float64 sums).

    Args:
        urls: the shards.
        limit: most images to decode.
        total: the number of samples (default: counted from the tar headers).
        progress: show a progress bar.

    Returns:
        The statistics, with ``images`` (decoded) and ``samples`` (``total``).
    """
    total = count_samples(urls, None) if total is None else total
    # Sample n is read when floor(n * limit / total) steps up: exactly min(limit, total)
    # samples, evenly spread.
    def picks(n: int) -> bool:
        return n * limit // total != (n - 1) * limit // total

    hist = np.zeros((3, 256), dtype=np.int64)
    widths, heights, counts = [], [], {}
    bar = tqdm(total=min(limit, total), desc="stats", unit="img", disable=not progress)
    for n, (_, image, label) in enumerate(iter_images(urls, picks=picks)):
        if n >= limit:
            break
        for c in range(3):
            hist[c] += np.bincount(image[:, :, c].ravel(), minlength=256)
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
        bar.update(1)
    bar.close()
    if not widths:
        raise no_images_error(urls)
    values = np.arange(256, dtype=np.float64) / 255.0
    total_px = hist.sum(axis=1)
    mean = (hist * values).sum(axis=1) / total_px
    std = np.sqrt(np.maximum((hist * values**2).sum(axis=1) / total_px - mean**2, 0.0))
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "channel_hist": hist,
        "widths": widths,
        "heights": heights,
        "class_counts": dict(sorted(counts.items())),
        "images": len(widths),
        "samples": total,
    }


def _show_pipeline(size: int, augment: bool):
    from fastdata import transforms as T

    geometry = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if augment
        else [T.Resize(size), T.CenterCrop(size)]
    )
    return T.Compose(geometry)


def at_least(low: int):
    """An argparse type: an integer of at least ``low`` (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def register(subparsers) -> None:
    """Adds ``fastdata show`` and ``fastdata stats``."""
    p = subparsers.add_parser("show", help="contact sheet of samples after the transforms")
    p.add_argument("shards", nargs="+", help="an index .json, or shard paths / brace patterns")
    p.add_argument("-n", type=at_least(1), default=32, help="samples to show (default 32)")
    p.add_argument("--size", type=at_least(1), default=160, help="output side of the crop (default 160)")
    p.add_argument(
        "--augment",
        action="store_true",
        help="RandomResizedCrop + flip instead of Resize + CenterCrop",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentations")
    p.add_argument("-o", "--out", default="contact_sheet.png", help="PNG to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_show)
    p = subparsers.add_parser(
        "stats", help="plot dataset statistics; print the mean/std for Normalize"
    )
    p.add_argument("shards", nargs="+", help="an index .json, or shard paths / brace patterns")
    p.add_argument("--limit", type=at_least(1), default=1000,
                   help="images to decode, evenly spread over all shards (default 1000)")  # fmt: skip
    p.add_argument("-o", "--out", default="stats.png", help="PNG to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_stats)


def _target(args) -> str | list[str]:
    return args.shards[0] if len(args.shards) == 1 else args.shards


def run_show(args) -> int:
    """Runs ``fastdata show``."""
    from fastdata.pictures.plots import contact_sheet

    try:
        urls, index = resolve_shards(_target(args))
        pipeline, rng = _show_pipeline(args.size, args.augment), np.random.default_rng(args.seed)
        total = count_samples(urls, index)  # shown samples are spread over every shard
        keys, images, labels = [], [], []
        bar = tqdm(total=args.n, desc="show", unit="img", disable=args.no_progress)
        for key, image, label in iter_images(urls, every=max(1, total // args.n)):
            if len(keys) >= args.n:
                break
            keys.append(key)
            images.append(pipeline(image, rng))
            labels.append(-1 if label is None else label)
            bar.update(1)
        bar.close()
        if not keys:
            raise no_images_error(urls)
    except (FastdataError, ValueError) as exc:
        print(f"fastdata show: error: {exc}", file=sys.stderr)
        return 1
    title = f"{len(keys)} samples after {'RandomResizedCrop + flip' if args.augment else 'Resize + CenterCrop'}"
    contact_sheet(images, keys, labels, args.out, class_names=class_names(index), title=title)
    print(f"wrote {args.out}")
    return 0


def run_stats(args) -> int:
    """Runs ``fastdata stats``: pixel statistics of ``--limit`` images spread evenly over
    every shard; class counts of every sample when the index holds them."""
    from fastdata.pictures.plots import plot_stats

    try:
        urls, index = resolve_shards(_target(args))
        total = count_samples(urls, index)
        stats = compute_stats(urls, args.limit, total, progress=not args.no_progress)
    except (FastdataError, ValueError) as exc:
        print(f"fastdata stats: error: {exc}", file=sys.stderr)
        return 1
    names = class_names(index)
    indexed = ((index or {}).get("stats") or {}).get("class_counts")
    counted = "sampled"
    if indexed and sum(indexed.values()) == total:  # exact counts of every sample
        stats["class_counts"], counted = {int(k): v for k, v in indexed.items()}, "all"
    if names:
        stats["class_counts"] = {
            names[k] if 0 <= k < len(names) else k: v for k, v in stats["class_counts"].items()
        }
    read = f"{stats['images']:,} of {total:,} samples, evenly spread over {len(urls)} shard(s)"
    plot_stats(stats, args.out, title=f"Statistics of {total:,} samples (pixels and sizes: {read})")
    mean = ", ".join(f"{v:.4f}" for v in stats["mean"])
    std = ", ".join(f"{v:.4f}" for v in stats["std"])
    print(f"images: {stats['images']} decoded ({read})\nmean: [{mean}]\nstd:  [{std}]")
    print(f"Normalize(mean=[{mean}], std=[{std}])")
    print(f"class counts ({counted} samples): "
          + json.dumps({str(k): v for k, v in stats["class_counts"].items()}))  # fmt: skip
    print(f"wrote {os.path.abspath(args.out)}")
    return 0
