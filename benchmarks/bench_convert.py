"""Conversion throughput: ``fastdata convert`` against a plain single-process conversion
with the webdataset library's ``ShardWriter``, on the same ImageNet-like JPEG folder.

Run: ``python benchmarks/bench_convert.py [--images 2000] [--repeats 5] [--engine local|ray|both]
[--maxcount N]``. Prints a markdown table (images/s, median/min/max of the repetitions,
and the ratio to the webdataset baseline measured in the same run). Candidates alternate
within each repetition so that machine drift affects them alike. Data goes to a temporary
folder. ``--engine ray`` (or ``both``) adds ``--engine ray`` candidates on a local Ray
instance with one CPU per core, started once before the measurement (its start-up time is
printed, not counted); give ``--maxcount`` below the image count so that there are several
shard tasks to spread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import webdataset as wds

from fastdata.convert.command import ConvertOptions, convert
from fastdata.convert.sources import ImageFolderSource
from fastdata.tools.sample_data import make_image_folder


def webdataset_baseline(src: str, out: str) -> int:
    """The straightforward conversion: read each file, write it with wds.ShardWriter."""
    source = ImageFolderSource(src)
    with wds.ShardWriter(os.path.join(out, "s-%06d.tar"), maxcount=10_000, verbose=0) as sink:
        for item in source.items:
            with open(os.path.join(src, str(item.ref)), "rb") as f:
                sink.write({"__key__": item.key, "jpg": f.read(), "cls": item.label})
    return len(source.items)


def fastdata_candidate(workers: int, stats_samples: int, maxcount: int = 10_000, engine: str = "local"):
    def run(src: str, out: str) -> int:
        options = ConvertOptions(maxcount=maxcount, workers=workers, stats_samples=stats_samples, engine=engine)
        return convert(src, os.path.join(out, "s-%06d.tar"), options).written
    return run


def start_ray() -> float:
    """Starts the local Ray instance the ``--engine ray`` candidates use; returns its start-up seconds."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return 0.0
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return time.perf_counter() - start


def measure(candidates: dict, src: str, work: str, repeats: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for rep in range(repeats + 1):  # the first round warms the page cache and is not counted
        for name, run in candidates.items():
            out = tempfile.mkdtemp(dir=work)
            start = time.perf_counter()
            count = run(src, out)
            seconds = time.perf_counter() - start
            shutil.rmtree(out)
            if rep:
                rates[name].append(count / seconds)
    return rates


def table(rates: dict[str, list[float]], baseline: str) -> str:
    base = statistics.median(rates[baseline])
    lines = ["| candidate | images/s (median) | min | max | ratio to webdataset |", "|---|---|---|---|---|"]
    for name, values in rates.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:,.0f} | {min(values):,.0f} | {max(values):,.0f} | {med / base:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine", choices=("local", "ray", "both"), default="local")
    parser.add_argument("--maxcount", type=int, default=10_000, help="samples per shard (shard tasks)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastdata-bench-convert-") as work:
        src = os.path.join(work, "photos")
        make_image_folder(src, n_per_class=max(1, args.images // 10))
        m = args.maxcount
        candidates = {"webdataset ShardWriter, 1 process": webdataset_baseline}
        if args.engine in ("local", "both"):
            candidates |= {
                "fastdata convert -j 0 --stats-samples 0 (1 process)": fastdata_candidate(0, 0, m),
                "fastdata convert -j 2 --stats-samples 0": fastdata_candidate(2, 0, m),
                "fastdata convert -j 0 (default: 500 images decoded for stats)": fastdata_candidate(0, 500, m),
                "fastdata convert -j 2 (default: 500 images decoded for stats)": fastdata_candidate(2, 500, m),
            }
        notes, started_ray = "", False
        if args.engine in ("ray", "both"):
            seconds = start_ray()
            started_ray = seconds > 0
            notes = f"\nRay start-up (not counted): {seconds:.1f} s; --maxcount {m}\n"
            candidates |= {
                "fastdata convert --engine ray --stats-samples 0": fastdata_candidate(0, 0, m, "ray"),
                "fastdata convert --engine ray (default: 500 images decoded for stats)":
                    fastdata_candidate(0, 500, m, "ray"),
            }
        try:
            result = table(measure(candidates, src, work, args.repeats), "webdataset ShardWriter, 1 process")
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        result += notes
    print(result)
    return result


if __name__ == "__main__":
    main()
