"""The throughput harness: counting, ratios, memory and the written outputs."""

from __future__ import annotations

import json
import time

import torch
from PIL import Image

from fastdata.tools.bench import Candidate, batch_size_of, measure, write_outputs


def slow_batches(n: int, delay: float):
    for _ in range(n):
        time.sleep(delay)
        yield torch.zeros(8, 3), torch.zeros(8)


def test_measure_counts_samples_and_ratios(tmp_path):
    calls = {"fast": 0}

    def fast():
        calls["fast"] += 1
        return slow_batches(5, 0.001)

    candidates = [Candidate("slow", lambda: slow_batches(5, 0.02)), Candidate("fast", fast),
                  Candidate("capped", lambda: slow_batches(100, 0.001), max_batches=3)]
    results = measure(candidates, repeats=3, workload="toy")
    by_name = {r.name: r for r in results}
    assert calls["fast"] == 4  # one warm-up and three timed repetitions
    assert by_name["slow"].ratio == 1.0 and len(by_name["slow"].runs) == 3
    assert by_name["fast"].ratio > 2  # 20 ms against 1 ms per batch
    assert 8 / 0.02 > by_name["slow"].samples_per_sec > 8 / 0.05  # 8 samples per >= 20 ms
    assert by_name["slow"].min <= by_name["slow"].samples_per_sec <= by_name["slow"].max
    assert all(r.peak_memory_mb > 10 for r in results)
    paths = write_outputs(results, str(tmp_path), {"cores": 2})
    record = json.loads(open(paths["json"]).read())
    assert [r["name"] for r in record["results"]] == ["slow", "fast", "capped"]
    assert "| toy | fast |" in open(paths["md"]).read()
    assert Image.open(paths["png"]).size[0] > 400


def test_batch_size_of_common_batch_shapes():
    assert batch_size_of([torch.zeros(4, 3), torch.zeros(4)]) == 4
    assert batch_size_of({"image": torch.zeros(6, 2)}) == 6
    assert batch_size_of(torch.zeros(2, 5)) == 2


def test_forked_workers_can_run_the_numba_kernel_after_the_parent_did():
    """Worker processes forked after the CPU batch kernel ran in the parent can run it too
    (GNU OpenMP would kill them; see NOTE [ Fork-safe threading layer ])."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from fastdata import transforms as T\n"
        "p = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * 3, [0.25] * 3)]).plan()\n"
        "batch = torch.full((4, 8, 8, 3), 255, dtype=torch.uint8)\n"
        "p.finish(batch)\n"
        "class Data(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 4\n"
        "    def __getitem__(self, i): return p.finish(batch)[0, 0, 0, 0]\n"
        "loader = torch.utils.data.DataLoader(Data(), batch_size=2, num_workers=2)\n"
        "print(sum(float(b.sum()) for b in loader))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == 8.0  # (1 - 0.5) / 0.25 per sample, four samples
