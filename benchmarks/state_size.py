"""The size of a ShardDataset state: 1,000 shards, 8 ranks x 8 workers, then resumed on 6 ranks.

Usage: python benchmarks/state_size.py
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import fastdata
from fastdata.shards.index import write_index
from fastdata.shards.writer import ShardWriter


def state_after(urls: str, rank: int, world: int, batches: int, state: dict | None = None) -> dict:
    ds = fastdata.ShardDataset(urls, fields=("cls",), shuffle=True, seed=0, rank=rank, world_size=world)
    loader = fastdata.DataLoader(ds, batch_size=16, num_workers=8)
    if state is not None:
        loader.load_state_dict(state)
    it = iter(loader)
    for _ in range(batches):
        next(it)
    return loader.state_dict()


def main() -> None:
    warnings.simplefilter("ignore")  # torch's advice on 8 workers for 2 cores
    with tempfile.TemporaryDirectory() as d:
        with ShardWriter(os.path.join(d, "s-%06d.tar"), maxcount=3) as sink:
            for i in range(3000):
                sink.write({"__key__": f"k{i:05d}", "cls": i % 10})
        write_index(os.path.join(d, "s.index.json"), {"shards": [s.to_dict() for s in sink.shards]})
        urls = os.path.join(d, "s-{000000..000999}.tar")
        first = state_after(urls, 0, 8, 5)
        print(f"1,000 shards, 8 ranks x 8 workers, after 5 batches: {len(json.dumps(first))} bytes")
        again = state_after(urls, 0, 6, 3, first)
        print(f"resumed on 6 ranks x 8 workers, after 3 more batches: {len(json.dumps(again))} bytes")


if __name__ == "__main__":
    main()
