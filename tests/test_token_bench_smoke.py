"""A smoke run of the token streaming benchmark (tiny data), so that it cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_bench_tokens_smoke(tmp_path, capsys):
    import bench_tokens

    folder = bench_tokens.make_data(tmp_path, 40_000, 3)
    results = {}
    for variant in bench_tokens.VARIANTS:
        bench_tokens.child(variant, folder, 4, 64, 3, 0)
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["shape"] == [4, 64] and result["dtype"] == "torch.int64" and result["rate"] > 0
        results[variant] = [{**result, "rss": 1}]
    assert "| nanoGPT get_batch |" in bench_tokens.table(results)
    stream = __import__("numpy").fromfile(folder / "train.bin", "uint16")
    assert len(stream) == 39_999  # 40,000 // 3 tokens per shard
