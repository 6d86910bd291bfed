"""fastdata train from shards: loaders stream uint8 batches with the right labels."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from fastdata import ShardWriter
from fastdata.cli import main
from fastdata.shards.index import write_index
from fastdata.train.loop import make_loaders


def jpeg(rng) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def write_split(folder, name, count, rng):
    with ShardWriter(str(folder / f"{name}-%03d.tar"), maxcount=8) as sink:
        for i in range(count):
            sink.write({"__key__": f"{name}{i:03d}", "jpg": jpeg(rng), "cls": i % 3})
    write_index(str(folder / f"{name}.index.json"), {
        "num_samples": count, "shards": [s.to_dict() for s in sink.shards],
        "label_map": {"ant": 0, "bee": 1, "cow": 2}})


def test_shard_loaders_stream_uint8_batches_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    write_split(tmp_path, "train", 20, rng)
    write_split(tmp_path, "val", 9, rng)
    train, val, classes = make_loaders(str(tmp_path / "train.index.json"), batch_size=4, image_size=16)
    assert classes == ["ant", "bee", "cow"]
    batches = list(val)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.dtype == torch.uint8 and images.shape == (9, 3, 16, 16)
    assert sorted(labels.tolist()) == sorted(i % 3 for i in range(9))  # workers interleave shards
    seen = sorted(torch.cat([b[1] for b in train]).tolist())
    assert seen == sorted(i % 3 for i in range(20))


def test_train_command_on_shards(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_split(tmp_path, "train", 12, rng)
    write_split(tmp_path, "val", 6, rng)
    out = tmp_path / "run"
    args = ["train", str(tmp_path / "train.index.json"), "--epochs", "1", "--image-size", "16",
            "--batch-size", "4", "--workers", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert history[0]["samples"] == 12 and "val_accuracy" in history[0]
    assert "samples/s" in capsys.readouterr().out


def test_checkpoints_with_a_fastdata_loader_over_a_plain_dataset(tmp_path):
    """fastdata.DataLoader over a plain dataset checkpoints with the loader's position."""
    import fastdata
    from fastdata.train.loop import fit

    data = [(torch.randn(3, 4, 4), i % 2) for i in range(8)]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    result = fit(model, fastdata.DataLoader(data, batch_size=4), epochs=1, checkpoint_dir=tmp_path,
                 progress=False, device="cpu")
    saved = torch.load(result.checkpoint, weights_only=True)
    assert saved["loader"]["_num_yielded"] == 2 and len(saved["history"]) == 1
