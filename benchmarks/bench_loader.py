"""torch's DataLoader vs fastdata.DataLoader vs fastdata.DataLoader(compile=True).

Two workloads, generated once into a folder outside the repository (``--data``):

- ``imagenet``: ImageNet-like JPEGs (about 400x350, quality 90, ``fastdata.tools.sample_data``)
  in ImageFolder layout -> RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor +
  Normalize, batch 256;
- ``cifar``: 32x32 PNGs (views of the same bundled photographs) -> RandomCrop(32,
  padding=4) + RandomHorizontalFlip + ToTensor + Normalize, batch 512;
- ``recipe``: the ``imagenet`` folder through torchvision's full classification recipe
  (``references/classification/train.py --auto-augment ta_wide --random-erase 0.1
  --mixup-alpha 0.2 --cutmix-alpha 1.0``): RandomResizedCrop(224) + RandomHorizontalFlip +
  TrivialAugmentWide + ToTensor + Normalize + RandomErasing(0.1), and a ``collate_fn``
  returning ``RandomChoice([MixUp(0.2), CutMix(1.0)])(*default_collate(batch))``, batch 256.

Every repetition runs one loader in a fresh child process (the three loaders alternate),
which warms up on one batch (worker start, Numba cache load) and then times one full epoch
from ``iter()`` to the last batch. The parent samples the child's process tree for the peak
of its summed RSS (every 20 ms) and PSS (every 240 ms; PSS shares pages between forked
workers fairly), as NOTE [ Sampling memory cheaply ] in ``proctree.py`` says.
Reports medians and writes the table into BENCHMARKS.md (``--write``).

Usage: ``flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_loader.py --write``
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proctree  # noqa: E402
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("torch", "fastdata", "compile")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH = {"imagenet": 256, "cifar": 512, "recipe": 256}
_MIX = None  # the recipe's MixUp/CutMix choice, made by build_loader


def mixing_collate(batch):
    """The recipe's collate function, as torchvision's reference script writes it."""
    return _MIX(*default_collate(batch))


def make_data(root: Path, jpegs: int, pngs: int) -> dict[str, Path]:
    """Generates both workloads under ``root`` (once; reused when the counts match)."""
    from PIL import Image

    from fastdata.tools.sample_data import DEFAULT_CLASSES, load_photograph, make_image_folder

    folders = {"imagenet": root / f"imagenet-{jpegs}", "cifar": root / f"cifar-{pngs}"}
    folders["recipe"] = folders["imagenet"]
    if not folders["imagenet"].exists():
        make_image_folder(
            folders["imagenet"], n_per_class=jpegs // len(DEFAULT_CLASSES), quality=90
        )
    if not folders["cifar"].exists():
        for ci, name in enumerate(DEFAULT_CLASSES):
            photo, out = load_photograph(name), folders["cifar"] / name
            out.mkdir(parents=True)
            for i in range(pngs // len(DEFAULT_CLASSES)):
                rng = np.random.default_rng([ci, i])
                w, h = photo.size
                side = int(rng.integers(32, min(w, h) // 2))
                x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
                photo.resize((32, 32), Image.BILINEAR, box=(x, y, x + side, y + side)).save(
                    out / f"{i:05d}.png"
                )
    return folders


def build_loader(variant: str, workload: str, folder: Path, workers: int, device: str | None = None):
    """The loader one child process times (batches for ``device`` when one is given)."""
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    import fastdata.loading.dataloader

    global _MIX
    after, collate = [], {}
    if workload == "imagenet":
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    elif workload == "recipe":
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.TrivialAugmentWide()]
        after = [T.RandomErasing(0.1)]
    else:
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    dataset = datasets.ImageFolder(
        str(folder), transform=T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD), *after])
    )
    if workload == "recipe":
        from torchvision.transforms import v2

        classes = len(dataset.classes)
        _MIX = v2.RandomChoice(
            [v2.MixUp(alpha=0.2, num_classes=classes), v2.CutMix(alpha=1.0, num_classes=classes)]
        )
        collate = {"collate_fn": mixing_collate}
    cls = torch.utils.data.DataLoader if variant == "torch" else fastdata.loading.dataloader.DataLoader
    extra = {"compile": True} if variant.startswith("compile") else {}
    if device is not None:  # torch's way: pinned float batches, copied by the consumer
        extra.update({"device": device} if extra else {"pin_memory": True})
    if variant.startswith("compile-"):  # compile-threads, compile-processes
        extra["worker_mode"] = variant.split("-", 1)[1]
    return cls(
        dataset, batch_size=BATCH[workload], shuffle=True, num_workers=workers, **collate, **extra
    )


def _cpu_seconds() -> float:
    """CPU time of this process and of its worker processes that have exited."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child(variant: str, workload: str, folder: Path, workers: int, device: str | None = None) -> None:
    """Times one epoch and prints ``{"samples", "seconds", "cpu_seconds"}`` as JSON.

    Workers of an epoch exit (and so count in ``RUSAGE_CHILDREN``) when its iterator is
    released, which ``gc.collect()`` makes sure of before each reading.
    """
    import torch

    loader = build_loader(variant, workload, folder, workers, device)
    for images, _ in loader:  # warm-up: worker start-up, Numba cache, page cache
        assert images.dtype.is_floating_point and images.dim() == 4
        break
    gc.collect()
    cpu, start, samples = _cpu_seconds(), time.perf_counter(), 0
    for images, labels in loader:
        if device is not None:
            images = images.to(device, non_blocking=True)  # a no-op where already there
        samples += len(labels)
    if device is not None:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    gc.collect()
    cpu = _cpu_seconds() - cpu
    print(json.dumps({"samples": samples, "seconds": seconds, "cpu_seconds": cpu}))


def measure(variant: str, workload: str, folder: Path, workers: int, device: str | None = None) -> dict:
    """Runs one child; returns its samples/s and the peak memory of its process tree."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        workload,
        str(folder),
        "--workers",
        str(workers),
        *(["--device", device] if device else []),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    peak_rss, peak_pss = proctree.watch(proc)  # NOTE [ Sampling memory cheaply ]
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}/{workload} failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    n = result["samples"]
    cpu_ms = 1000 * result["cpu_seconds"] / n
    return {"rate": n / result["seconds"], "cpu_ms": cpu_ms, "rss": peak_rss, "pss": peak_pss}


def table(results: dict, reps: int, workers: int) -> str:
    """The Markdown table of medians with ratios to torch."""
    lines = [
        "| workload | loader | samples/s | × torch | CPU ms/sample | peak RSS (MiB) | peak PSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, by_variant in results.items():
        first = next(iter(by_variant.values()))
        base = statistics.median(r["rate"] for r in by_variant.get("torch", first))
        for variant, runs in by_variant.items():
            rate = statistics.median(r["rate"] for r in runs)
            cpu = statistics.median(r["cpu_ms"] for r in runs)
            rss = statistics.median(r["rss"] for r in runs) / 2**20
            pss = statistics.median(r["pss"] for r in runs) / 2**20
            name = {"torch": "torch DataLoader", "fastdata": "fastdata.DataLoader",
                    "compile": "fastdata.DataLoader(compile=True)"}.get(variant, variant)  # fmt: skip
            lines.append(
                f"| {workload} (batch {BATCH[workload]}) | {name} | {rate:,.0f} | {rate / base:.2f} | {cpu:.2f} | {rss:,.0f} | {pss:,.0f} |"
            )
    note = f"\n\n{workers} workers, shuffle=True, medians of {reps} alternating repetitions, one epoch each.\n"
    return "\n".join(lines) + note


def write_section(text: str, path: Path) -> None:
    """Writes ``text`` into this script's marked section of ``path`` (BENCHMARKS.md)."""
    report.write_section(path, "bench_loader", text, "## DataLoader")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/fastdata-bench-loader"))
    parser.add_argument("--jpegs", type=int, default=1500)
    parser.add_argument("--pngs", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workloads", nargs="+", default=["imagenet", "cifar"])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        help="also compile-threads, compile-processes",
    )
    parser.add_argument("--device", help="deliver batches there (e.g. cuda); torch pins and copies")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "WORKLOAD", "FOLDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]), args.workers, args.device)
        return 0
    folders = make_data(args.data, args.jpegs, args.pngs)
    results: dict = {w: {v: [] for v in args.variants} for w in args.workloads}
    for rep in range(args.reps):
        for workload in args.workloads:
            for variant in args.variants:
                r = measure(variant, workload, folders[workload], args.workers, args.device)
                results[workload][variant].append(r)
                print(
                    f"rep {rep} {workload:8s} {variant:8s} {r['rate']:9,.0f}/s cpu {r['cpu_ms']:.2f} ms rss {r['rss'] / 2**20:6,.0f} MiB pss {r['pss'] / 2**20:6,.0f} MiB",
                    flush=True,
                )
    text = table(results, args.reps, args.workers)
    print(text)
    if args.write:
        cmd = "flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_loader.py --write"
        write_section(f"Command: `{cmd}`\n\n{text}", ROOT / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
