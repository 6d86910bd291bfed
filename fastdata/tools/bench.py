"""The throughput harness shared by ``fastdata bench`` and the suites in ``benchmarks/``.

A candidate is a name and a function that returns a fresh iterable of batches (one
epoch, or as many batches as it likes). ``measure`` runs every candidate once to warm up
(page cache, JIT, worker start-up), then ``repeats`` timed repetitions, alternating the
candidates within each repetition so that drift of a shared machine hits them alike. It
reports samples/s (median, min, max), the ratio to the baseline of the same run, the peak
memory of the process tree (proportional set size, so pages shared with forked workers
are not counted twice) and the CPU time used per second (in cores).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import torch


@dataclass
class Candidate:
    """A loader to measure: ``make()`` returns a fresh iterable of batches."""

    name: str
    make: Callable[[], Iterable]
    max_batches: int | None = None


@dataclass
class Result:
    """What ``measure`` found for one candidate."""

    name: str
    workload: str
    samples_per_sec: float
    min: float
    max: float
    ratio: float
    peak_memory_mb: float
    cpu_cores: float
    runs: list[float] = field(default_factory=list)


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor."""
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    if hasattr(batch, "shape"):
        return int(batch.shape[0])
    return len(batch)


class _MemorySampler:
    """Samples the summed PSS (RSS where PSS is unavailable) of this process and its children."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_memory(self) -> int:
        total = 0
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (psutil.Error, OSError):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_memory())
            self._stop.wait(self.interval)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _tree_cpu_seconds() -> float:
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.Error:
            continue
    return total


def run_once(candidate: Candidate) -> tuple[int, float]:
    """Iterates one repetition; returns (samples, seconds)."""
    samples = 0
    start = time.perf_counter()
    iterator = iter(candidate.make())
    for n, batch in enumerate(iterator):
        samples += batch_size_of(batch)
        if candidate.max_batches is not None and n + 1 >= candidate.max_batches:
            break
    seconds = time.perf_counter() - start
    del iterator  # shut down workers before the next candidate starts
    return samples, seconds


def measure(candidates: list[Candidate], *, repeats: int = 5, workload: str = "",
            baseline: str | None = None, log: Callable[[str], None] | None = None,
            progress: bool = False) -> list[Result]:
    """Warms up, then times ``repeats`` alternating repetitions of every candidate
    (``progress``: a bar on stderr naming the workload and the candidate running)."""
    from tqdm.auto import tqdm

    baseline = baseline or candidates[0].name
    bar = tqdm(total=(repeats + 1) * len(candidates), desc=workload or "bench", unit="run", disable=not progress)
    runs: dict[str, list[float]] = {c.name: [] for c in candidates}
    memory: dict[str, int] = dict.fromkeys(runs, 0)
    cpu: dict[str, list[float]] = {c.name: [] for c in candidates}
    for rep in range(repeats + 1):
        for candidate in candidates:
            bar.set_postfix_str(f"{'warm-up' if rep == 0 else f'repeat {rep}'}: {candidate.name}")
            cpu_before = _tree_cpu_seconds()
            with _MemorySampler() as sampler:
                samples, seconds = run_once(candidate)
            bar.update(1)
            if rep == 0:
                continue  # warm-up
            runs[candidate.name].append(samples / seconds)
            cpu[candidate.name].append((_tree_cpu_seconds() - cpu_before) / seconds)
            memory[candidate.name] = max(memory[candidate.name], sampler.peak)
            if log is not None:
                log(f"{workload} {candidate.name}: {samples / seconds:,.0f} samples/s")
    bar.close()
    base = statistics.median(runs[baseline])
    return [
        Result(name, workload, statistics.median(values), min(values), max(values),
               statistics.median(values) / base, memory[name] / 2**20, statistics.median(cpu[name]), values)
        for name, values in runs.items()
    ]


def conditions(**declared: Any) -> dict[str, Any]:
    """The declared conditions of a run: machine, cores, library versions, plus ``declared``."""
    return {
        "machine": platform.machine(), "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, **declared,
    }


def markdown_table(results: list[Result]) -> str:
    """A markdown table of results, one row per candidate."""
    lines = [
        "| workload | candidate | samples/s (median) | min | max | ratio | peak memory (MB) | CPU (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.workload} | {r.name} | {r.samples_per_sec:,.0f} | {r.min:,.0f} | {r.max:,.0f} | "
                     f"{r.ratio:.2f}× | {r.peak_memory_mb:,.0f} | {r.cpu_cores:.2f} |")
    return "\n".join(lines)


def write_outputs(results: list[Result], out_dir: str, declared: dict[str, Any], baseline: str | None = None) -> dict:
    """Writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``out_dir``; returns their paths."""
    from fastdata.pictures.plots import plot_throughput

    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"bench.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"conditions": declared, "results": [asdict(r) for r in results]}, f, indent=1)
    table = markdown_table(results)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write("Conditions: " + ", ".join(f"{k}={v}" for k, v in declared.items()) + "\n\n" + table + "\n")
    records = [{"name": r.name, "workload": r.workload, "samples_per_sec": r.samples_per_sec,
                "min": r.min, "max": r.max} for r in results]
    plot_throughput(records, paths["png"], baseline=baseline, title="Samples per second")
    return paths
