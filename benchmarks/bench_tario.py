"""Tar reading speed: ``fastdata.shards.tario.iter_samples`` against the webdataset library.

Shards of 32x32 PNG samples (with a ``.cls`` label) are read without decoding by

- fastdata: ``fastdata.shards.tario.iter_samples(urls)``;
- webdataset: ``tar_file_expander`` + ``group_by_keys`` over ``url_opener`` (the library's
  own tar iterator, as ``wds.WebDataset`` uses it, with no decoding).

Repetitions alternate between the readers; the table gives the median samples/s and the
ratio of medians. ``--write`` puts the table into BENCHMARKS.md.

Usage: ``flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_tario.py --write``
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_shards(folder: Path, n: int, per_shard: int) -> list[str]:
    """Writes ``n`` random 32x32 PNG samples with labels; returns the shard paths."""
    from PIL import Image

    from fastdata.shards.writer import ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(str(folder / "png-%06d.tar"), maxcount=per_shard) as sink:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
            sink.write({"__key__": f"{i:07d}", "png": buf.getvalue(), "cls": i % 10})
    return [str(folder / s.name) for s in sink.shards]


def read_fastdata(urls: list[str]) -> int:
    from fastdata.shards.tario import iter_samples

    return sum(1 for _ in iter_samples(urls))


def read_webdataset(urls: list[str]) -> int:
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    stream = group_by_keys(tar_file_expander(url_opener([{"url": u} for u in urls])))
    return sum(1 for _ in stream)


READERS = {"fastdata": read_fastdata, "webdataset": read_webdataset}


def measure(urls: list[str], reps: int) -> dict[str, list[float]]:
    """Samples/s of each reader, ``reps`` alternating repetitions after one warm-up each."""
    rates: dict[str, list[float]] = {name: [] for name in READERS}
    counts = {name: fn(urls) for name, fn in READERS.items()}  # warm-up: page cache, imports
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the readers disagree on the number of samples: {counts}")
    for _ in range(reps):
        for name, fn in READERS.items():
            t0 = time.perf_counter()
            n = fn(urls)
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def table(rates: dict[str, list[float]], n: int, shards: int) -> str:
    base = statistics.median(rates["webdataset"])
    lines = [
        f"{n:,} samples (32x32 PNG + .cls, about 3.3 KB each) in {shards} shards, page cache warm, "
        f"median of {len(rates['fastdata'])} alternating repetitions:",
        "",
        "| reader | samples/s | × webdataset |",
        "|---|---|---|",
    ]
    for name, runs in rates.items():
        rate = statistics.median(runs)
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Writes ``text`` into this script's marked section of ``path`` (BENCHMARKS.md)."""
    report.write_section(path, "bench_tario", text, "## Tar reading\n\nCommand:\n\n    flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_tario.py --write")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--per-shard", type=int, default=5_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        urls = make_shards(Path(tmp), args.samples, args.per_shard)
        rates = measure(urls, args.reps)
    text = table(rates, args.samples, len(urls))
    print(text)
    if args.write:
        write_section(text, ROOT / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
