"""A small, real, ImageNet-like image dataset built offline from bundled photographs.

Each class is one photograph shipped inside the scikit-image or scikit-learn package (never a
downloaded one); its samples are random crops, scales and horizontal flips of that photograph,
resized to ImageNet-like sizes (about 400x350 on average) and saved as JPEG files in the
torchvision ``ImageFolder`` layout ``root/<class>/<class>_<index>.jpg``.

Every sample is a pure function of ``(seed, stream, class index, sample index)``, so a dataset
is reproduced exactly by its arguments, whatever the number of threads that build it.

Command line: ``fastdata sample-data OUT [--per-class N] [--val-per-class M] [--seed S]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from fastdata.errors import SourceError

# Class name -> (package, path of the file inside the package). Only files that the wheels
# ship are listed: scikit-image fetches its other images from the network, which we avoid.
PHOTOGRAPHS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "coins": ("skimage", "data/coins.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "moon": ("skimage", "data/moon.png"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
}

# The ten classes used by default: distinct scenes, a mix of colour and grey photographs.
DEFAULT_CLASSES: tuple[str, ...] = (
    "astronaut", "camera", "chelsea", "coffee", "coins",
    "rocket", "hubble", "motorcycle", "china", "flower",
)  # fmt: skip

# A crop covers this fraction of the photograph's area (before the resize).
_AREA_RANGE = (0.2, 1.0)
# Output height / width, drawn uniformly: with widths of 300..500 the mean is about 400x350.
_ASPECT_RANGE = (0.7, 1.05)


def photograph_path(name: str) -> Path:
    """Returns the path of a bundled photograph, without importing its package.

    Raises:
        SourceError: the name is unknown, or its package is not installed.
    """
    if name not in PHOTOGRAPHS:
        raise SourceError(name, f"unknown photograph; choose among {sorted(PHOTOGRAPHS)}")
    package, relative = PHOTOGRAPHS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            name, f"needs the {package!r} package: pip install 'fastdata[demo]' to install it"
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise SourceError(str(path), f"photograph missing from the installed {package!r}")
    return path


def load_photograph(name: str) -> Image.Image:
    """Loads a bundled photograph as an RGB image (grey ones are converted)."""
    with Image.open(photograph_path(name)) as image:
        return image.convert("RGB")


def random_view(
    photo: Image.Image, rng: np.random.Generator, size_range: tuple[int, int]
) -> Image.Image:
    """Returns a random crop of ``photo``, scaled to a random size and maybe flipped.

    Args:
        photo: the RGB source photograph.
        rng: the sample's random generator.
        size_range: inclusive range of the output width in pixels; the height follows from a
            random aspect ratio in ``_ASPECT_RANGE``.
    """
    out_w = int(rng.integers(size_range[0], size_range[1] + 1))
    out_h = max(1, round(out_w * rng.uniform(*_ASPECT_RANGE)))
    src_w, src_h = photo.size
    area = src_w * src_h * rng.uniform(*_AREA_RANGE)
    # Crop with the output's aspect ratio, jittered by up to 10% (a mild stretch).
    aspect = out_h / out_w * rng.uniform(0.9, 1.1)
    crop_w = min(src_w, max(8, round(np.sqrt(area / aspect))))
    crop_h = min(src_h, max(8, round(crop_w * aspect)))
    left = int(rng.integers(0, src_w - crop_w + 1))
    top = int(rng.integers(0, src_h - crop_h + 1))
    view = photo.resize(
        (out_w, out_h), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
    )
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view


def make_image_folder(
    root: str | os.PathLike,
    *,
    n_per_class: int = 300,
    size_range: tuple[int, int] = (300, 500),
    seed: int = 0,
    quality: int = 90,
    classes: Sequence[str] = DEFAULT_CLASSES,
    stream: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Writes an ImageFolder dataset of random views of bundled photographs.

    Args:
        root: output folder; ``root/<class>/<class>_<index>.jpg`` files are written there.
        n_per_class: number of JPEG files per class.
        size_range: inclusive range of image widths; heights are 0.7 to 1.05 times the width.
        seed: dataset seed; the same arguments always give the same files.
        quality: JPEG quality (1-95).
        classes: names of photographs from ``PHOTOGRAPHS``; one class each, in this order.
        stream: random stream id, so that two splits built with the same seed differ.
        workers: threads encoding the files (default: the number of CPUs, at most 8).
        progress: show a progress bar (on stderr).

    Returns:
        A description: ``root``, ``classes``, ``counts`` (class -> files), ``num_samples``,
        ``sources`` (class -> photograph file), ``seed``, ``stream``, ``size_range``.

    Raises:
        SourceError: a photograph is unknown or missing.
        ValueError: a numeric argument is out of range.
    """
    if n_per_class < 0 or not 1 <= quality <= 95 or not 8 <= size_range[0] <= size_range[1]:
        raise ValueError(
            f"need n_per_class >= 0, 1 <= quality <= 95 and 8 <= size_range[0] <= size_range[1];"
            f" got {n_per_class}, {quality}, {size_range}"
        )
    root = Path(root)
    photos = {name: load_photograph(name) for name in classes}
    jobs = [(ci, name, i) for ci, name in enumerate(classes) for i in range(n_per_class)]
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)

    def write(job: tuple[int, str, int]) -> None:
        class_index, name, index = job
        rng = np.random.default_rng([seed, stream, class_index, index])
        view = random_view(photos[name], rng, size_range)
        view.save(root / name / f"{name}_{index:05d}.jpg", quality=quality)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(jobs), desc=f"sample-data {root}", unit="img", disable=not progress) as bar:
        for _ in pool.map(write, jobs):  # re-raises the first error
            bar.update(1)
    return {
        "root": str(root),
        "classes": list(classes),
        "counts": {name: n_per_class for name in classes},
        "num_samples": len(jobs),
        "sources": {name: str(photograph_path(name)) for name in classes},
        "seed": seed,
        "stream": stream,
        "size_range": list(size_range),
    }


def make_splits(
    root: str | os.PathLike, per_class: dict[str, int], *, seed: int = 0, **kwargs
) -> dict[str, dict]:
    """Writes several ImageFolder splits, ``root/<split>/<class>/...``, from distinct streams.

    Args:
        root: output folder.
        per_class: split name -> files per class, such as ``{"train": 240, "val": 60}``.
        seed: dataset seed.
        **kwargs: passed to ``make_image_folder`` (``size_range``, ``quality``, ``classes``...).

    Returns:
        Split name -> the description returned by ``make_image_folder``.
    """
    return {
        split: make_image_folder(
            Path(root) / split, n_per_class=n, seed=seed, stream=stream, **kwargs
        )
        for stream, (split, n) in enumerate(per_class.items())
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``fastdata sample-data`` sub-command."""
    p = subparsers.add_parser(
        "sample-data",
        help="write a small ImageNet-like JPEG dataset built from bundled photographs",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("out", help="output folder (ImageFolder layout)")
    p.add_argument("--per-class", type=int, default=300, help="images per class (default 300)")
    p.add_argument(
        "--val-per-class",
        type=int,
        default=0,
        help="if > 0, write OUT/train and OUT/val with this many validation images per class",
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fastdata sample-data``; returns the exit code."""
    if args.val_per_class > 0:
        sizes = {"train": args.per_class, "val": args.val_per_class}
        infos = make_splits(args.out, sizes, seed=args.seed, quality=args.quality,
                            progress=not args.no_progress)  # fmt: skip
    else:
        infos = {
            ".": make_image_folder(
                args.out, n_per_class=args.per_class, seed=args.seed, quality=args.quality,
                progress=not args.no_progress,
            )
        }
    for info in infos.values():
        print(f"{info['root']}: {info['num_samples']} images, {len(info['classes'])} classes")
    return 0
