"""The demo end to end on a tiny dataset: every step runs and the report is complete."""

from __future__ import annotations

import json

from PIL import Image

from fastdata.tools.demo import run_demo


def test_tiny_demo_writes_a_complete_report(tmp_path):
    report = run_demo(str(tmp_path / "report"), per_class=4, val_per_class=2, epochs=1, repeats=1)
    text = open(report).read()
    for png in ("stats.png", "samples.png", "bench/bench.png", "training/training.png", "training/confusion.png"):
        assert f"]({png})" in text
        with Image.open(tmp_path / "report" / png) as image:
            assert image.format == "PNG" and min(image.size) > 200
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["data"]["train"]["samples"] == 40 and summary["data"]["val"]["samples"] == 20
    names = [r["name"] for r in summary["bench"]]
    assert names[0] == "torch DataLoader + torchvision" and "fastdata DataLoader(compile=True)" in names
    assert summary["bench"][0]["ratio"] == 1.0
    assert 0.0 <= summary["training"][-1]["val_accuracy"] <= 1.0
    assert "validation accuracy" in text
