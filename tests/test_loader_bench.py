"""Smoke runs of benchmarks/bench_loader.py on tiny generated data (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_loader.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loader", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out = bench.make_data(root, 20, 30)
    assert len(list(out["imagenet"].rglob("*.jpg"))) == 20
    assert len(list(out["cifar"].rglob("*.png"))) == 30
    return out


@pytest.mark.parametrize("workload", ["imagenet", "cifar", "recipe"])
@pytest.mark.parametrize("variant", ["torch", "fastdata", "compile"])
def test_child_times_one_epoch(bench, folders, workload, variant, capsys, recwarn):
    bench.child(variant, workload, folders[workload], workers=0)
    assert not [w for w in recwarn if "could not compile" in str(w.message)]
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = {"imagenet": 20, "cifar": 30, "recipe": 20}[workload]
    assert result["samples"] == expected and result["seconds"] > 0 and result["cpu_seconds"] > 0


def test_measure_runs_a_child_process_and_tracks_memory(bench, folders):
    r = bench.measure("compile", "cifar", folders["cifar"], workers=1)
    assert r["rate"] > 0 and r["cpu_ms"] > 0 and r["rss"] > 2**20 and 0 < r["pss"] <= r["rss"]


def test_table_and_section(bench, tmp_path):
    results = {"cifar": {"torch": [{"rate": 10.0, "cpu_ms": 1.0, "rss": 2**30, "pss": 2**29}],
                         "fastdata": [{"rate": 20.0, "cpu_ms": 1.0, "rss": 2**30, "pss": 2**29}],
                         "compile": [{"rate": 40.0, "cpu_ms": 1.0, "rss": 2**30, "pss": 2**29}]}}  # fmt: skip
    text = bench.table(results, reps=1, workers=2)
    assert "| 1.00 |" in text and "| 2.00 |" in text and "| 4.00 |" in text
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    bench.write_section(text, doc)
    bench.write_section(text.replace("4.00", "5.00"), doc)
    body = doc.read_text()
    assert (
        body.count("## DataLoader") == 1
        and "kept" in body
        and "5.00" in body
        and "4.00" not in body
    )


@pytest.mark.slow
def test_command_line(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp_path), "--jpegs", "20", "--pngs", "30",
           "--reps", "1", "--workers", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert sum(line.startswith(("| imagenet", "| cifar")) for line in done.stdout.splitlines()) == 6
