"""Ranks of a real ``torch.distributed`` (gloo) group: one order, equal batches, and a state
saved on one cluster shape resumed on another (2 -> 2, 2 -> 1, 2 -> 3, 1 -> 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from shard_fixtures import write_image_shards

RANK_SCRIPT = r"""
import datetime, hashlib, json, sys
import torch, torch.distributed as dist
import fastdata
from fastdata import transforms as T

rank, world, urls, init, out, resume_from, stop_at = sys.argv[1:8]
rank, world, stop_at = int(rank), int(world), int(stop_at)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
pipe = T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])
ds = fastdata.ShardDataset(urls, transform=pipe, fields=("__key__",), shuffle=True, buffer_size=6, seed=7)
loader = fastdata.DataLoader(ds, batch_size=4, num_workers=1 + rank % 2)
if resume_from != "-":
    loader.load_state_dict(json.load(open(resume_from)))  # rank 0's state, loaded on every rank
record = {"rank": ds.world()[0], "epochs": [], "state": None}
step = 0
while ds.state_dict()["epoch"] < 2:
    epoch = {"batches": [], "digests": {}}
    for images, keys in loader:
        total = torch.ones(1)
        dist.all_reduce(total)  # every rank must reach every batch, or this hangs (and times out)
        epoch["batches"].append(list(keys))
        for key, img in zip(keys, images):
            epoch["digests"][key] = hashlib.sha256(img.numpy().tobytes()).hexdigest()
        step += 1
        if step == stop_at:
            record["state"] = loader.state_dict()
    record["epochs"].append(epoch)
json.dump(record, open(out, "w"))
dist.barrier()
dist.destroy_process_group()
"""


def run_ranks(tmp_path, urls: str, world: int, tag: str, resume_from: str = "-", stop_at: int = -1) -> list[dict]:
    init = f"file://{tmp_path}/init-{tag}"
    outs = [str(tmp_path / f"{tag}-{r}.json") for r in range(world)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), str(world), urls, init, outs[r], resume_from,
                          str(stop_at)], env=env)
        for r in range(world)
    ]  # fmt: skip
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0] * world
    return [json.load(open(o)) for o in outs]


STOP_AT = 3  # the state is taken after this many batches (mid-epoch 0)


@pytest.mark.parametrize("before, after", [
    (2, 3), pytest.param(2, 2, marks=pytest.mark.slow), pytest.param(2, 1, marks=pytest.mark.slow),
    pytest.param(1, 2, marks=pytest.mark.slow),
])  # fmt: skip
def test_a_state_saved_on_one_cluster_resumes_on_another(tmp_path, before, after):
    # 9 shards of uneven length (50 samples): ranks may get one sample more, yet equal batches
    urls, pixels = write_image_shards(str(tmp_path), 50, 6)
    full = run_ranks(tmp_path, urls, before, "full", stop_at=STOP_AT)
    assert [r["rank"] for r in full] == list(range(before))
    for epoch in range(2):
        keys = [k for r in full for b in r["epochs"][epoch]["batches"] for k in b]
        assert sorted(keys) == sorted(pixels)  # every sample once per epoch
        assert len({len(r["epochs"][epoch]["batches"]) for r in full}) == 1  # equal batches
    assert full[0]["epochs"][0]["batches"] != full[0]["epochs"][1]["batches"]

    (tmp_path / "state.json").write_text(json.dumps(full[0]["state"]))
    resumed = run_ranks(tmp_path, urls, after, "resumed", resume_from=str(tmp_path / "state.json"))
    done = [k for r in full for b in r["epochs"][0]["batches"][:STOP_AT] for k in b]
    rest = [k for r in resumed for b in r["epochs"][0]["batches"] for k in b]
    assert sorted(done + rest) == sorted(pixels)  # nothing lost, nothing twice
    assert len({len(r["epochs"][0]["batches"]) for r in resumed}) == 1
    for epoch in range(2):  # every sample with the augmentation it had in the uninterrupted run
        want = {k: d for r in full for k, d in r["epochs"][epoch]["digests"].items()}
        got = {k: d for r in resumed for k, d in r["epochs"][epoch]["digests"].items()}
        assert all(want[k] == d for k, d in got.items())
    later = [k for r in resumed for b in r["epochs"][1]["batches"] for k in b]
    assert sorted(later) == sorted(pixels)
    if after == before:  # the same cluster: the very same batches
        for r in range(before):
            assert resumed[r]["epochs"][0]["batches"] == full[r]["epochs"][0]["batches"][STOP_AT:]
            assert resumed[r]["epochs"][1]["batches"] == full[r]["epochs"][1]["batches"]
