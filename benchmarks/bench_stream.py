"""Streaming shards (``ShardDataset``) against torch's DataLoader over the same images as files.

Three workloads, same output (a float32 normalised NCHW batch), 2 workers:

- ``imagenet``: ImageNet-like JPEGs (about 400x350, quality 90) -> RandomResizedCrop(224) +
  flip + normalise, batch 256; fastdata reads JPEG shards written by ``fastdata convert``;
- ``cifar``: 32x32 images -> RandomCrop(32, padding=4) + flip + normalise, batch 512; torch
  reads PNG files, fastdata raw-pixel shards (``fastdata convert --raw``);
- ``npy``: uint8 3x64x64 arrays -> normalise, batch 512; torch reads ``.npy`` files, fastdata
  ``.npy`` shards.

The image folders come from ``bench_loader.make_data``. Every repetition runs one loader in a
fresh child process (variants alternate); the child warms up on one batch, then times one
full epoch; the parent samples the child's process tree for the peak summed RSS (every 20 ms)
and PSS (every 240 ms). Reports medians, fastdata's wait share, and writes BENCHMARKS.md
(``--write``).

Memory is sampled as NOTE [ Sampling memory cheaply ] in ``proctree.py`` says.

Usage: ``flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_stream.py --write``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import proctree  # noqa: E402
import report  # noqa: E402
from bench_loader import make_data  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH = {"imagenet": 256, "cifar": 512, "npy": 512}
VARIANTS = ("torch", "fastdata")


def make_all(root: Path, jpegs: int, pngs: int, arrays: int) -> dict[str, dict[str, Path]]:
    """Folders for torch and shards for fastdata, per workload (made once)."""
    from fastdata.convert.command import ConvertOptions, convert
    from fastdata.convert.prepare import PrepareOptions

    folders = make_data(root, jpegs, pngs)
    out = {}
    for workload, raw in (("imagenet", False), ("cifar", True)):
        shards = root / f"{workload}-shards-{jpegs if workload == 'imagenet' else pngs}"
        if not shards.exists():
            convert(str(folders[workload]), str(shards / "train-%06d.tar"),
                    ConvertOptions(maxcount=2000, prepare=PrepareOptions(raw=raw)))  # fmt: skip
        out[workload] = {"files": folders[workload], "shards": shards}
    out["npy"] = _make_arrays(root / f"npy-{arrays}", arrays)
    return out


def _make_arrays(folder: Path, n: int) -> dict[str, Path]:
    from fastdata.shards.writer import ShardWriter

    files, shards = folder / "files", folder / "shards"
    if not folder.exists():
        files.mkdir(parents=True)
        rng = np.random.default_rng(0)
        with ShardWriter(str(shards / "train-%06d.tar"), maxcount=2000) as sink:
            for i in range(n):
                arr = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
                np.save(files / f"{i:06d}.npy", arr)
                sink.write({"__key__": f"{i:06d}", "npy": arr, "cls": i % 10})
    return {"files": files, "shards": shards}


class _ArrayFiles:
    """torch baseline of ``npy``: one ``.npy`` file per sample, torchvision v2 transforms."""

    def __init__(self, folder: Path, transform) -> None:
        self.paths, self.transform = sorted(folder.glob("*.npy")), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        return self.transform(torch.from_numpy(np.load(self.paths[i]))), i % 10


def build(variant: str, workload: str, paths: dict[str, Path], workers: int, device: str | None = None):
    """The iterable of batches one child times, and its stats object (or None)."""
    import torch

    if variant == "torch":
        from torchvision import datasets
        from torchvision.transforms import v2 as T

        norm = [T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]
        if workload == "npy":
            dataset = _ArrayFiles(paths["files"], T.Compose(norm))
        else:
            geo = [T.RandomResizedCrop(224)] if workload == "imagenet" else [T.RandomCrop(32, padding=4)]
            dataset = datasets.ImageFolder(str(paths["files"]), transform=T.Compose([T.PILToTensor(), *geo, T.RandomHorizontalFlip(), *norm]))
        pin = device is not None  # torch's way to a GPU: pinned float batches, copied by the consumer
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH[workload], shuffle=True, num_workers=workers, pin_memory=pin), None
    from fastdata import transforms as F
    from fastdata.loading.shard_dataset import ShardDataset

    norm = [F.ToDtype(torch.float32, scale=True), F.Normalize(MEAN, STD)]
    geo = {"imagenet": [F.RandomResizedCrop(224), F.RandomHorizontalFlip()],
           "cifar": [F.RandomCrop(32, padding=4), F.RandomHorizontalFlip()], "npy": []}[workload]  # fmt: skip
    urls = sorted(str(p) for p in paths["shards"].glob("*.tar"))
    ds = ShardDataset(urls, transform=F.Compose([*geo, *norm]), shuffle=True, seed=0)
    return _Epochs(ds, BATCH[workload], workers, device), ds.stats


class _Epochs:
    def __init__(self, ds, batch: int, workers: int, device: str | None) -> None:
        self.ds, self.batch, self.workers, self.device = ds, batch, workers, device

    def __iter__(self):
        return iter(self.ds.iter_batches(self.batch, num_workers=self.workers, device=self.device))


def child(variant: str, workload: str, paths: dict[str, Path], workers: int, device: str | None = None) -> None:
    """Times one epoch after a one-batch warm-up; prints JSON."""
    import torch

    loader, stats = build(variant, workload, paths, workers, device)
    for images, _ in loader:
        if images.dtype != __import__("torch").float32 or images.dim() != 4:
            raise RuntimeError(f"unexpected batch {images.dtype} {tuple(images.shape)}")
        break
    if stats is not None:
        stats.wait_s = stats.elapsed_s = 0.0
    start, samples = time.perf_counter(), 0
    for images, labels in loader:
        if device is not None:
            images = images.to(device, non_blocking=True)  # a no-op where already there
        samples += len(labels)
    if device is not None:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"samples": samples, "seconds": seconds, "wait_share": stats.wait_share if stats else None}))


def measure(variant: str, workload: str, paths: dict[str, Path], workers: int, device: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, workload, json.dumps({k: str(v) for k, v in paths.items()}), "--workers", str(workers)]
    cmd += ["--device", device] if device else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak_rss, peak_pss = proctree.watch(proc)  # NOTE [ Sampling memory cheaply ] in proctree.py
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}/{workload} failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"rate": result["samples"] / result["seconds"], "rss": peak_rss, "pss": peak_pss, "wait": result["wait_share"]}


def table(results: dict, reps: int, workers: int) -> str:
    lines = [
        f"{workers} workers, median of {reps} alternating repetitions (one epoch each, fresh process):",
        "",
        "| workload | loader | samples/s | × torch | peak RSS (MiB) | peak PSS (MiB) | wait share |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, by_variant in results.items():
        base = statistics.median(r["rate"] for r in by_variant["torch"])
        for variant, runs in by_variant.items():
            rate = statistics.median(r["rate"] for r in runs)
            rss = statistics.median(r["rss"] for r in runs) / 2**20
            pss = statistics.median(r["pss"] for r in runs) / 2**20
            wait = "" if runs[0]["wait"] is None else f"{statistics.median(r['wait'] for r in runs):.0%}"
            name = "torch DataLoader, files" if variant == "torch" else "fastdata ShardDataset, shards"
            lines.append(f"| {workload} (batch {BATCH[workload]}) | {name} | {rate:,.0f} | {rate / base:.2f} | {rss:,.0f} | {pss:,.0f} | {wait} |")
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Writes ``text`` into this script's marked section of ``path`` (BENCHMARKS.md)."""
    report.write_section(path, "bench_stream", text, "## Streaming shards")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/fastdata-bench-loader"))
    parser.add_argument("--jpegs", type=int, default=1500)
    parser.add_argument("--pngs", type=int, default=10000)
    parser.add_argument("--arrays", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workloads", nargs="+", default=["imagenet", "cifar", "npy"])
    parser.add_argument("--device", help="deliver batches there (e.g. cuda); torch pins and copies")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "WORKLOAD", "PATHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args.child[0], args.child[1], {k: Path(v) for k, v in json.loads(args.child[2]).items()}, args.workers, args.device)
        return 0
    data = make_all(args.data, args.jpegs, args.pngs, args.arrays)
    results = {w: {v: [] for v in VARIANTS} for w in args.workloads}
    for rep in range(args.reps):
        for workload in args.workloads:
            for variant in VARIANTS:
                r = measure(variant, workload, data[workload], args.workers, args.device)
                results[workload][variant].append(r)
                print(f"rep {rep} {workload:8s} {variant:8s} {r['rate']:9,.0f}/s rss {r['rss'] / 2**20:6,.0f} MiB", flush=True)
    text = table(results, args.reps, args.workers)
    print(text)
    if args.write:
        cmd = "flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_stream.py --write"
        write_section(f"Command: `{cmd}`\n\n{text}", ROOT / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
