"""Two ranks of a real ``torch.distributed`` (gloo) group: disjoint shards, equal batches, resumption."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shard_fixtures import write_image_shards

RANK_SCRIPT = r"""
import datetime, hashlib, json, sys
import torch, torch.distributed as dist
from fastdata import transforms as T
from fastdata.loading.shard_dataset import ShardDataset

rank, urls, init, out, resume_from, stop_at = sys.argv[1:7]
rank, stop_at = int(rank), int(stop_at)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
pipe = T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])
ds = ShardDataset(urls, transform=pipe, fields=("__key__",), shuffle=True, buffer_size=6, seed=7)
if resume_from != "-":
    ds.load_state_dict(json.load(open(resume_from))[rank])
record = {"rank": ds.world()[0], "epochs": [], "state": None}
step = 0
while ds.state_dict()["epoch"] < 2:
    keys, digests = [], []
    for images, batch_keys in ds.iter_batches(4, num_workers=2):
        total = torch.ones(1)
        dist.all_reduce(total)  # every rank must reach every batch, or this hangs (and times out)
        keys += batch_keys
        digests.append(hashlib.sha256(images.numpy().tobytes()).hexdigest())
        step += 1
        if step == stop_at:
            record["state"] = ds.state_dict()
    record["epochs"].append({"keys": keys, "digests": digests})
json.dump(record, open(out, "w"))
dist.barrier()
dist.destroy_process_group()
"""


STOP_AT = 3  # the state is taken after this many batches (mid-epoch)


def run_ranks(tmp_path, urls: str, tag: str, resume_from: str = "-", stop_at: int = -1) -> list[dict]:
    init = f"file://{tmp_path}/init-{tag}"
    outs = [str(tmp_path / f"{tag}-{r}.json") for r in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), urls, init, outs[r], resume_from, str(stop_at)], env=env)
        for r in range(2)
    ]  # fmt: skip
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    return [json.load(open(o)) for o in outs]


def test_two_gloo_ranks_split_cover_stay_equal_and_resume(tmp_path):
    # 9 shards of uneven length: ranks get different numbers of samples, yet equal batches
    urls, pixels = write_image_shards(str(tmp_path), 50, 6)
    full = run_ranks(tmp_path, urls, "full", stop_at=STOP_AT)
    assert [r["rank"] for r in full] == [0, 1]
    for epoch in range(2):
        k0, k1 = (full[r]["epochs"][epoch]["keys"] for r in range(2))
        assert not set(k0) & set(k1)  # disjoint
        assert len(full[0]["epochs"][epoch]["digests"]) == len(full[1]["epochs"][epoch]["digests"])
        assert set(k0) | set(k1) <= set(pixels)
        assert len(set(k0) | set(k1)) >= len(pixels) - 2 * 2 * 4  # at most a batch per slot dropped
    assert full[0]["epochs"][0]["keys"] != full[0]["epochs"][1]["keys"]

    states = [full[r]["state"] for r in range(2)]
    assert all(s is not None and s["rank"] == r for r, s in enumerate(states))
    (tmp_path / "states.json").write_text(json.dumps(states))
    resumed = run_ranks(tmp_path, urls, "resumed", resume_from=str(tmp_path / "states.json"))
    for r in range(2):
        flat = [d for e in full[r]["epochs"] for d in e["digests"]]
        again = [d for e in resumed[r]["epochs"] for d in e["digests"]]
        assert again == flat[STOP_AT:]
