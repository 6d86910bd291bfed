"""Smoke run of benchmarks/bench_tokenize.py so that it cannot rot."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_tokenize_runs_on_tiny_input():
    pytest.importorskip("tokenizers")
    spec = importlib.util.spec_from_file_location("bench_tokenize", ROOT / "benchmarks" / "bench_tokenize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--docs", "40", "--repeats", "1", "--vocab", "300"])
    rows = [line for line in result.splitlines() if line.startswith(("| bytes", "| bpe"))]
    assert len(rows) == 4
    assert rows[0].endswith("| 1.00× |") and rows[2].endswith("| 1.00× |")
    # both candidates wrote the same number of tokens
    assert rows[0].split("|")[5] == rows[1].split("|")[5] and rows[2].split("|")[5] == rows[3].split("|")[5]
