"""The workloads of ``fastdata bench``: data made on the spot, and the candidates that load it.

Each workload gives every candidate the same images and asks for the same output, a
float32 normalised NCHW batch with int64 labels:

- ``imagenet``: ImageNet-like JPEGs (about 400×350, quality 90) → RandomResizedCrop(224) +
  flip + normalise; files for torch's DataLoader and ``compile=True``, shards for
  ``ShardDataset`` and the ``webdataset`` library;
- ``cifar``: 32×32 images → RandomCrop(32, padding=4) + flip + normalise; PNG files for
  torch, shards of raw pixels for ``ShardDataset``;
- ``arrays``: uint8 3×64×64 arrays → normalise; one ``.npy`` file per sample for torch,
  shards of ``.npy`` samples for ``ShardDataset``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdata.convert.command import ConvertOptions, convert
from fastdata.convert.prepare import PrepareOptions
from fastdata.tools.bench import Candidate

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WORKLOADS = ("imagenet", "cifar", "arrays")


def make_small_folder(root: Path, count: int, side: int = 32, seed: int = 0) -> None:
    """An ImageFolder of ``side``-pixel PNG views of the bundled photographs."""
    from PIL import Image

    from fastdata.tools.sample_data import DEFAULT_CLASSES, load_photograph, random_view

    for ci, name in enumerate(DEFAULT_CLASSES):
        photo, folder = load_photograph(name), root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count // len(DEFAULT_CLASSES)):
            view = random_view(photo, np.random.default_rng([seed, ci, i]), (side * 2, side * 8))
            view.resize((side, side), Image.BILINEAR).save(folder / f"{i:05d}.png")


def make_array_files(root: Path, count: int, side: int = 64, seed: int = 0) -> None:
    """``count`` uint8 3×side×side arrays: one ``.npy`` per sample plus a labelled ``.npz``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(files / f"{i:06d}.npy", images[i].transpose(2, 0, 1))
    np.save(root / "labels.npy", labels)
    np.savez(root / "arrays.npz", images=images, labels=labels)


def prepare_data(root: str, workload: str, count: int, progress: bool = False) -> dict[str, str]:
    """Makes (or reuses) a workload's files and shards under ``root``; returns their paths
    (``progress``: bars while the files are made and converted)."""
    base = Path(root) / f"{workload}-{count}"
    src = base / "src"
    if not (base / "done").exists():
        if workload == "imagenet":
            from fastdata.tools.sample_data import make_image_folder

            make_image_folder(src, n_per_class=max(1, count // 10), quality=90, progress=progress)
        elif workload == "cifar":
            make_small_folder(src, count)
        else:
            make_array_files(src, count)
        source = str(src / "arrays.npz") if workload == "arrays" else str(src)
        options = ConvertOptions(maxcount=max(1, count // 16), workers=2, shuffle_seed=0, stats_samples=0,
                                 prepare=PrepareOptions(raw=workload == "cifar"))
        convert(source, str(base / "shards" / "s-%06d.tar"), options, progress=progress)
        (base / "done").write_text("ok\n")
    return {"src": str(src), "index": str(base / "shards" / "s.index.json")}


def _tv_pipeline(workload: str):
    from torchvision import transforms as tv

    geometry = {"imagenet": [tv.RandomResizedCrop(224), tv.RandomHorizontalFlip()],
                "cifar": [tv.RandomCrop(32, padding=4), tv.RandomHorizontalFlip()]}[workload]
    return tv.Compose([*geometry, tv.ToTensor(), tv.Normalize(MEAN, STD)])


def _fd_pipeline(workload: str):
    from fastdata import transforms as T

    geometry = {"imagenet": [T.RandomResizedCrop(224), T.RandomHorizontalFlip()],
                "cifar": [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()], "arrays": []}[workload]
    return T.Compose([*geometry, T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])


class NpyFiles(torch.utils.data.Dataset):
    """One ``.npy`` (uint8 CHW) per sample, normalised with torch ops: the torch baseline."""

    def __init__(self, folder: str) -> None:
        self.paths = sorted(str(p) for p in Path(folder, "files").glob("*.npy"))
        self.labels = np.load(Path(folder, "labels.npy"))
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.load(self.paths[i])).float().div_(255)
        return (x - self.mean) / self.std, int(self.labels[i])


def candidates(workload: str, paths: dict[str, str], batch_size: int, workers: int) -> list[Candidate]:
    """torch's DataLoader (the baseline) and fastdata's ways of loading the same data."""
    from torchvision.datasets import ImageFolder

    from fastdata.loading.dataloader import DataLoader
    from fastdata.loading.shard_dataset import ShardDataset
    from fastdata.shards.index import read_index, shard_urls

    urls = shard_urls(paths["index"], read_index(paths["index"]))
    common: dict[str, Any] = {"batch_size": batch_size, "num_workers": workers}
    shards = lambda: DataLoader(  # noqa: E731
        ShardDataset(urls, transform=_fd_pipeline(workload), shuffle=True), **common)
    if workload == "arrays":
        files = NpyFiles(paths["src"])
        return [Candidate("torch DataLoader, .npy files", lambda: torch.utils.data.DataLoader(
                    files, shuffle=True, **common)),
                Candidate("fastdata ShardDataset, .npy shards", shards)]
    folder = ImageFolder(paths["src"], transform=_tv_pipeline(workload))
    out = [
        Candidate("torch DataLoader + torchvision", lambda: torch.utils.data.DataLoader(
            folder, shuffle=True, **common)),
        Candidate("fastdata DataLoader(compile=True)", lambda: DataLoader(
            folder, shuffle=True, compile=True, **common)),
        Candidate("fastdata ShardDataset" + (" (raw pixels)" if workload == "cifar" else ""), shards),
    ]
    webdataset = _webdataset_candidate(workload, urls, batch_size, workers)
    return out + ([webdataset] if webdataset else [])


def _webdataset_candidate(workload: str, urls: list[str], batch_size: int, workers: int) -> Candidate | None:
    if workload != "imagenet":
        return None
    try:
        import webdataset as wds
    except ImportError:
        return None
    tv = _tv_pipeline(workload)

    def make():
        dataset = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000)
                   .decode("pil").to_tuple("jpg", "cls").map_tuple(tv, int).batched(batch_size))
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)

    return Candidate("webdataset + torchvision", make)


def imagenet_candidates(folder: str, index: str, batch_size: int, workers: int) -> list[Candidate]:
    """The imagenet workload's candidates on data that already exists (used by the demo)."""
    return candidates("imagenet", {"src": folder, "index": index}, batch_size, workers)


def register(subparsers) -> None:
    """Adds ``fastdata bench``."""
    p = subparsers.add_parser("bench", help="samples/s of fastdata against torch's DataLoader (and webdataset)")
    p.add_argument("--workloads", default="imagenet,cifar,arrays", help="comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--images", type=int, default=0, help="samples per workload (default 2000/20000/20000)")
    p.add_argument("--batch-size", type=_int_list, default=[0],
                   help="one or more, comma-separated (default 256 for imagenet, 512 otherwise)")
    p.add_argument("--workers", type=_int_list, default=[2], help="one or more worker counts, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "fastdata-bench-data"),
                   help="where generated data is kept between runs")
    p.add_argument("--out", default="bench-report", help="folder for bench.json, bench.md and bench.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def short_epoch_warning(count: int, batch_size: int, workers: int) -> str | None:
    """A warning when an epoch is too short to measure: fewer than two full batches per
    worker (each worker also makes its own partial last batch), so start-up and partial
    batches dominate the time."""
    need = 2 * batch_size * max(1, workers)
    if count >= need:
        return None
    return (f"{count} samples make {count / batch_size:.2g} batches of {batch_size} per epoch over "
            f"{max(1, workers)} worker(s), too few to measure a rate (start-up and partial batches "
            f"dominate); use --images {need} or more, or a smaller --batch-size")  # fmt: skip


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def run(args) -> int:
    """Runs ``fastdata bench``: every workload × batch size × worker count."""
    from fastdata.tools.bench import conditions, markdown_table, measure, write_outputs

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"fastdata bench: unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    results = []
    progress = not args.no_progress
    for workload in workloads:
        count = args.images or (2000 if workload == "imagenet" else 20000)
        if progress:
            print(f"fastdata bench: {workload}: {count} samples in {args.data}", file=sys.stderr, flush=True)
        paths = prepare_data(args.data, workload, count, progress=progress)
        for batch in args.batch_size:
            batch = batch or (256 if workload == "imagenet" else 512)
            for workers in args.workers:
                warning = short_epoch_warning(count, batch, workers)
                if warning:
                    print(f"fastdata bench: warning: {workload}: {warning}", file=sys.stderr, flush=True)
                label = f"{workload} (batch {batch}, {workers} workers, {count} samples)"
                results += measure(candidates(workload, paths, batch, workers), repeats=args.repeats, workload=label,
                                   progress=progress)
    declared = conditions(page_cache="warm (one warm-up epoch per candidate)", output="float32 NCHW normalised",
                          device="cpu", repeats=args.repeats)
    paths = write_outputs(results, args.out, declared)
    print(markdown_table(results))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
