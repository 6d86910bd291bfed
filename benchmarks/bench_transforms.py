"""Transforms benchmarks: batch normalisation, decoders, and decode + RandomResizedCrop + flip.

Usage (timing-sensitive: run alone)::

    flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_transforms.py

Every figure is the median of several repetitions, and every comparison is a ratio
against a baseline measured in the same run. ``--quick`` runs tiny sizes (the smoke test).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms.v2 as v2
from PIL import Image

from fastdata import transforms as T

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _interleaved(cases: dict, reps: int) -> dict[str, float]:
    """Median seconds per case, repetitions alternating between cases (load drifts hit all)."""
    for fn in cases.values():
        fn()  # warm-up (compilation, caches)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_normalize(n: int, size: int, reps: int) -> list[dict]:
    """uint8 NHWC batch -> float32 NCHW normalised: fastdata vs torchvision vs torch ops vs a copy."""
    batch = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)
    nchw_u8 = batch.permute(0, 3, 1, 2)
    out = torch.empty((n, 3, size, size), dtype=torch.float32)
    plan = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]).plan()
    tv = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    scale = (1 / (255 * torch.tensor(STD))).view(1, 3, 1, 1)
    bias = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1).expand_as(out)

    def torch_ops():
        out.copy_(nchw_u8)
        torch.addcmul(bias, out, scale, out=out)

    src_f, dst_f = torch.empty_like(out).numpy(), np.empty(out.shape, np.float32)
    src_f.fill(1.0)
    cases = {
        "fastdata numba (fused table)": (
            lambda: plan.finish(batch, out=out),
            n * size * size * 3 * 5,
        ),
        "torchvision v2 ToDtype+Normalize": (lambda: tv(nchw_u8), n * size * size * 3 * 5),
        "torch copy_ + addcmul": (torch_ops, n * size * size * 3 * 5),
        "numpy float32 copy (ceiling)": (lambda: np.copyto(dst_f, src_f), n * size * size * 3 * 8),
    }
    secs = _interleaved({k: fn for k, (fn, _) in cases.items()}, reps)
    return [
        {"case": k, "batches_per_s": 1 / secs[k], "GB_per_s": nbytes / secs[k] / 1e9}
        for k, (_, nbytes) in cases.items()
    ]


def bench_normalize_cuda(n: int, size: int, reps: int) -> list[dict]:
    """On CUDA: the torch batch kernel (uint8 NHWC -> float32 NCHW) against a
    device-to-device copy of the same output size (the bandwidth ceiling)."""
    device = torch.device("cuda")
    batch = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=device)
    out = torch.empty((n, 3, size, size), dtype=torch.float32, device=device)
    plan = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]).plan()
    src_f = torch.ones_like(out)

    def timed(fn):
        def run_synced():
            fn()
            torch.cuda.synchronize(device)
        return run_synced

    tv = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    nchw = batch.permute(0, 3, 1, 2)
    cases = {
        "fastdata torch kernel on CUDA": (timed(lambda: plan.finish(batch, out=out)), n * size * size * 3 * 5),
        "torchvision v2 ToDtype+Normalize on CUDA": (timed(lambda: tv(nchw)), n * size * size * 3 * 5),
        "device-to-device float32 copy (ceiling)": (timed(lambda: out.copy_(src_f)), n * size * size * 3 * 8),
    }
    secs = _interleaved({k: fn for k, (fn, _) in cases.items()}, reps)
    return [
        {"case": k, "batches_per_s": 1 / secs[k], "GB_per_s": nbytes / secs[k] / 1e9}
        for k, (_, nbytes) in cases.items()
    ]


def make_jpegs(count: int, h: int = 350, w: int = 400, quality: int = 90) -> list[bytes]:
    """ImageNet-like JPEGs: random crops of real photographs resized to ``h`` x ``w``."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [getattr(data, k)() for k in ("astronaut", "chelsea", "coffee", "rocket")]
    photos += list(load_sample_images().images)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        p = photos[i % len(photos)]
        ch, cw = int(p.shape[0] * rng.uniform(0.7, 1)), int(p.shape[1] * rng.uniform(0.7, 1))
        y, x = int(rng.integers(0, p.shape[0] - ch + 1)), int(rng.integers(0, p.shape[1] - cw + 1))
        img = Image.fromarray(np.ascontiguousarray(p[y : y + ch, x : x + cw, :3])).resize(
            (w, h), Image.BICUBIC
        )
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def bench_decoders(jpegs: list[bytes], reps: int) -> list[dict]:
    """Full-size RGB decoding, one thread: Pillow vs simplejpeg (fastdata) vs torchvision.io."""
    import simplejpeg
    import torchvision.io as tio

    tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    cases = {
        "Pillow": lambda: [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs],
        "simplejpeg (fastdata.decode.images)": lambda: [
            simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs
        ],
        "torchvision.io.decode_jpeg": lambda: [tio.decode_jpeg(t) for t in tensors],
    }
    with _torch_threads(1):
        secs = _interleaved(cases, reps)
    return [{"case": k, "images_per_s": len(jpegs) / v} for k, v in secs.items()]


class _torch_threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _run_threads(work, items, threads: int) -> None:
    if threads == 1:
        for i, item in enumerate(items):
            work(i, item)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(len(items)), items))


def bench_decode_crop(jpegs: list[bytes], size: int, reps: int, threads=(1, 2)) -> list[dict]:
    """Decode + RandomResizedCrop(size) + horizontal flip per image, 1 and 2 threads."""
    plan = T.Compose([T.DecodeImage(), T.RandomResizedCrop(size), T.RandomHorizontalFlip()]).plan()
    slots = np.empty((len(jpegs), *plan.sample_shape), np.uint8)
    tv_pil = v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    tv_tensor = v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()])

    def ours(i, data):
        plan.sample_into(data, slots[i], np.random.default_rng(i))

    def pil_path(i, data):
        tv_pil(Image.open(io.BytesIO(data)).convert("RGB"))

    def tensor_path(i, data):
        import torchvision.io as tio

        tv_tensor(tio.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)))

    cases = {}
    for t in threads:
        for name, fn in (
            ("PIL + torchvision v2", pil_path),
            ("torchvision.io + v2 (tensor)", tensor_path),
            ("fastdata plan.sample_into", ours),
        ):
            cases[(name, t)] = lambda fn=fn, t=t: _run_threads(fn, jpegs, t)
    with _torch_threads(1):
        secs = _interleaved(cases, reps)
    return [
        {"case": k[0], "threads": k[1], "images_per_s": len(jpegs) / v} for k, v in secs.items()
    ]


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(lines)


def run(quick: bool = False) -> dict[str, list[dict]]:
    """Run every suite; ``quick`` uses tiny sizes (for the smoke test)."""
    n, size, reps = (4, 32, 2) if quick else (256, 224, 7)
    jpegs = make_jpegs(4 if quick else 64)
    results = {
        "normalize": bench_normalize(n, size, reps),
        "decoders": bench_decoders(jpegs, reps),
        "decode_crop": bench_decode_crop(jpegs, 32 if quick else 224, reps),
    }
    if torch.cuda.is_available():
        results["normalize_cuda"] = bench_normalize_cuda(n, size, reps)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    for name, rows in run(args.quick).items():
        print(f"\n## {name}\n\n{_table(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
