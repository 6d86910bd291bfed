"""Smoke run of benchmarks/bench_convert.py so that it cannot rot."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_convert_runs_on_tiny_data():
    spec = importlib.util.spec_from_file_location("bench_convert", ROOT / "benchmarks" / "bench_convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--images", "20", "--repeats", "1"])
    rows = [line for line in result.splitlines() if line.startswith("| webdataset") or line.startswith("| fastdata")]
    assert len(rows) == 5
    assert rows[0].endswith("| 1.00× |")
