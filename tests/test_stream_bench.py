"""Smoke runs of the streaming and tar-reading benchmarks (tiny data), so they cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_bench_tario_smoke(capsys):
    import bench_tario

    assert bench_tario.main(["--samples", "120", "--per-shard", "50", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "| fastdata |" in out and "| webdataset | " in out


@pytest.mark.parametrize("workload", ["cifar", "npy", "imagenet"])
def test_bench_stream_smoke(tmp_path, capsys, workload):
    pytest.importorskip("torchvision")
    import bench_stream

    data = bench_stream.make_all(tmp_path, 20, 40, 40)
    for variant in bench_stream.VARIANTS:
        bench_stream.child(variant, workload, data[workload], 0)
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["samples"] > 0 and result["seconds"] > 0
    text = bench_stream.table({workload: {v: [{"rate": 1.0, "rss": 1, "pss": 1, "wait": 0.5}] for v in bench_stream.VARIANTS}}, 1, 0)
    assert "fastdata ShardDataset" in text
