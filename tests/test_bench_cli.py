"""Smoke run of ``fastdata bench`` on tiny data: every workload, two worker counts."""

from __future__ import annotations

import json

from PIL import Image

from fastdata.cli import main


def test_bench_command_measures_every_workload(tmp_path, capsys):
    out = tmp_path / "report"
    args = ["bench", "--images", "40", "--repeats", "1", "--batch-size", "16", "--workers", "0,1",
            "--data", str(tmp_path / "data"), "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "bench.json").read_text())
    workloads = {r["workload"] for r in record["results"]}
    assert len(workloads) == 6  # 3 workloads x 2 worker counts
    for r in record["results"]:
        assert r["samples_per_sec"] > 0 and r["peak_memory_mb"] > 0
    baselines = [r for r in record["results"] if r["name"].startswith("torch")]
    assert len(baselines) == 6 and all(r["ratio"] == 1.0 for r in baselines)
    with Image.open(out / "bench.png") as image:
        assert image.format == "PNG"
    assert "| arrays (batch 16, 1 workers, 40 samples) |" in capsys.readouterr().out


def test_bench_warns_about_epochs_too_short_to_measure(tmp_path, capsys):
    """400 images in batches of 512 are one partial batch per epoch: say so (and show the
    bars that name workload and candidate)."""
    from fastdata.tools.workloads import short_epoch_warning

    assert short_epoch_warning(400, 512, 2) and "--images 2048" in short_epoch_warning(400, 512, 2)
    assert short_epoch_warning(20000, 512, 2) is None
    args = ["bench", "--workloads", "arrays", "--images", "40", "--repeats", "1", "--batch-size", "32",
            "--workers", "0", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "report")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: arrays: 40 samples make 1.2 batches of 32" in err
    assert "repeat 1: torch DataLoader" in err  # the progress bar names the candidate
