"""The JSON index written beside a set of shards.

It records, per shard, the file name, sample count, byte size and SHA-256 of the content,
plus the label mapping and dataset statistics. Readers use it for ``len()``, for equal
per-rank epochs and for integrity checks; shards without an index still stream.

The index of the shards ``out/train-%06d.tar`` is ``out/train.index.json``: the pattern's
file name without the number field and the separators before it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from fastdata.errors import FastdataError

FORMAT = "fastdata-index"
VERSION = 1
_NUMBER = re.compile(r"%0?\d*d")
_TRAILING_NUMBER = re.compile(r"[-_.]*\d+$")


def index_path_for_pattern(pattern: str) -> str:
    """The index path for an output pattern such as ``out/train-%06d.tar``."""
    folder, name = os.path.split(pattern)
    stem = _NUMBER.split(name)[0].rstrip("-_.") or "index"
    if stem == "index":
        return os.path.join(folder, "index.json")
    return os.path.join(folder, f"{stem}.index.json")


def index_path_for_shard(shard: str) -> str:
    """The index path beside a shard file such as ``out/train-000003.tar``."""
    folder, name = os.path.split(shard)
    stem = _TRAILING_NUMBER.sub("", name.split(".", 1)[0])
    if not stem:
        return os.path.join(folder, "index.json")
    return os.path.join(folder, f"{stem}.index.json")


def find_index(urls: Iterable[str]) -> str | None:
    """Returns the path of the index beside the first local shard of ``urls``, if it exists."""
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            return None
        path = index_path_for_shard(url)
        return path if os.path.exists(path) else None
    return None


def resolve_shards(shards: str | Iterable[str]) -> tuple[list[str], str | None, dict[str, Any] | None]:
    """``(urls, index path, index)`` from an index ``.json`` path or shard paths/patterns;
    for shards, the index beside them is used when it exists (else both are None)."""
    from fastdata.shards.urls import expand_urls

    if isinstance(shards, (str, os.PathLike)) and str(shards).endswith(".json"):
        index = read_index(str(shards))
        return shard_urls(str(shards), index), str(shards), index
    urls = expand_urls(shards)
    path = find_index(urls)
    return urls, path, (read_index(path) if path else None)


def write_index(path: str, index: dict[str, Any]) -> None:
    """Writes an index atomically (temporary file, then rename)."""
    body = {"format": FORMAT, "version": VERSION, **index}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_index(path: str) -> dict[str, Any]:
    """Reads and checks an index file.

    Raises:
        FastdataError: the file is not a fastdata index.
    """
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise FastdataError(f"{path}: cannot read index: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise FastdataError(f"{path}: not a fastdata index (no 'format': {FORMAT!r})")
    if not isinstance(index.get("shards"), list):
        raise FastdataError(f"{path}: index has no list of shards")
    return index


def shard_urls(index_path: str, index: dict[str, Any]) -> list[str]:
    """The paths of an index's shards (relative to the index's folder)."""
    folder = os.path.dirname(index_path)
    return [os.path.join(folder, shard["name"]) for shard in index["shards"]]


class StatsAccumulator:
    """Per-channel pixel sums, class counts and image sizes, mergeable across shards.

    Pixel statistics are of values scaled to [0, 1], accumulated in float64.
    """

    def __init__(self) -> None:
        self.pixel_sum = np.zeros(3)
        self.pixel_sq_sum = np.zeros(3)
        self.pixel_count = 0
        self.images = 0
        self.class_counts: dict[str, int] = {}
        self.sizes: dict[str, int] = {}

    def add_size(self, width: int, height: int) -> None:
        key = f"{width}x{height}"
        self.sizes[key] = self.sizes.get(key, 0) + 1

    def add_label(self, label: int | None) -> None:
        if label is not None:
            key = str(label)
            self.class_counts[key] = self.class_counts.get(key, 0) + 1

    def add_pixels(self, channel_sum: np.ndarray, channel_sq_sum: np.ndarray, count: int) -> None:
        self.pixel_sum += channel_sum
        self.pixel_sq_sum += channel_sq_sum
        self.pixel_count += count
        self.images += 1

    def merge(self, other: StatsAccumulator) -> None:
        """Adds ``other``'s sums and counts to this one's (exact: no average of averages)."""
        self.pixel_sum += other.pixel_sum
        self.pixel_sq_sum += other.pixel_sq_sum
        self.pixel_count += other.pixel_count
        self.images += other.images
        for mine, theirs in ((self.class_counts, other.class_counts), (self.sizes, other.sizes)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count

    def state(self) -> dict[str, Any]:
        return {
            "pixel_sum": self.pixel_sum.tolist(),
            "pixel_sq_sum": self.pixel_sq_sum.tolist(),
            "pixel_count": self.pixel_count,
            "images": self.images,
            "class_counts": dict(self.class_counts),
            "sizes": dict(self.sizes),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StatsAccumulator:
        acc = cls()
        acc.pixel_sum = np.asarray(state["pixel_sum"], dtype=np.float64)
        acc.pixel_sq_sum = np.asarray(state["pixel_sq_sum"], dtype=np.float64)
        acc.pixel_count = int(state["pixel_count"])
        acc.images = int(state["images"])
        acc.class_counts = {k: int(v) for k, v in state["class_counts"].items()}
        acc.sizes = {k: int(v) for k, v in state["sizes"].items()}
        return acc

    def summary(self, bins: int = 10) -> dict[str, Any]:
        """Mean/std per channel, class counts and size histograms for the index."""
        out: dict[str, Any] = {"class_counts": dict(sorted(self.class_counts.items(), key=_num))}
        if self.pixel_count:
            mean = self.pixel_sum / self.pixel_count
            var = np.maximum(self.pixel_sq_sum / self.pixel_count - mean**2, 0.0)
            out["mean"] = [round(float(v), 6) for v in mean]
            out["std"] = [round(float(v), 6) for v in np.sqrt(var)]
            out["stats_images"] = self.images
        out["sizes"] = self.sizes
        out["size_histogram"] = _size_histogram(self.sizes, bins)
        return out


def _num(item: tuple[str, int]) -> tuple[int, str]:
    key = item[0]
    return (int(key), "") if key.lstrip("-").isdigit() else (0, key)


def _size_histogram(sizes: dict[str, int], bins: int) -> dict[str, Any]:
    if not sizes:
        return {}
    dims = np.array([[int(v) for v in k.split("x")] for k in sizes])
    weights = np.array(list(sizes.values()))
    hist = {}
    for axis, name in enumerate(("width", "height")):
        counts, edges = np.histogram(dims[:, axis], bins=bins, weights=weights)
        hist[name] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    return hist
