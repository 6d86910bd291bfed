"""``fastdata train-lm`` end to end on real token shards (``convert_tokens`` of a tiny JSONL
manifest, read by ``TokenDataset``): pretraining, exact resume, fine-tuning, errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fastdata.cli import main
from fastdata.convert.tokenize import TokenizeOptions, convert_tokens

ARCH = ["--seq-len", "32", "--layers", "2", "--heads", "2", "--dim", "32", "--batch-size", "8",
        "--workers", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Train and validation token shards of two classes of short documents (a label column)."""
    root = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    words = {"cats": ["purr", "meow", "whisker", "nap"], "dogs": ["bark", "woof", "fetch", "leash"]}
    for split, n in (("train", 96), ("val", 32)):
        rows = []
        for i in range(n):
            label = "cats" if i % 2 else "dogs"
            text = " ".join(rng.choice(words[label]) for _ in range(rng.randint(3, 8)))
            rows.append(json.dumps({"text": text, "label": label}))
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        convert_tokens(str(root / f"{split}.jsonl"), str(root / "tok" / f"{split}-%06d.tar"),
                       TokenizeOptions(tokenizer="bytes", tokens_per_shard=1000))  # fmt: skip
    return root / "tok" / "train.index.json"


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def pretrained(shards, tmp_path_factory):
    """``fastdata train-lm`` run for two epochs: its output folder and what it printed."""
    out = tmp_path_factory.mktemp("lm") / "whole"
    assert main(["train-lm", str(shards), *ARCH, "--epochs", "2", "--lr", "3e-3", "--out", str(out)]) == 0
    return out


def test_pretraining_reports(pretrained):
    history = json.loads((pretrained / "history.json").read_text())["epochs"]
    assert history[-1]["val_loss"] < history[0]["train_loss"]  # validation from val.index.json
    assert history[-1]["val_perplexity"] > 1 and history[-1]["tokens_per_sec"] > 0
    assert (pretrained / "training.png").stat().st_size > 10_000
    assert not (pretrained / "confusion.png").exists()


def test_pretraining_resumes_exactly(shards, pretrained, tmp_path, capsys):
    # One epoch, then --resume up to two: the same weights as the uninterrupted run.
    part = tmp_path / "part"
    assert main(["train-lm", str(shards), *ARCH, "--epochs", "1", "--lr", "3e-3", "--out", str(part)]) == 0
    assert main(["train-lm", str(shards), "--epochs", "2", "--lr", "3e-3", "--out", str(part), "--resume",
                 *ARCH]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "tokens/s" in printed
    a, b = _weights(pretrained / "checkpoints" / "last.pt"), _weights(part / "checkpoints" / "last.pt")
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], msg=key)


def test_fine_tuning_a_classifier(shards, pretrained, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    init = pretrained / "checkpoints" / "last.pt"
    assert main(["train-lm", "--classify", "--init", str(init), "--train-last", "1", str(shards),
                 "--batch-size", "8", "--epochs", "3", "--lr", "3e-3", "--workers", "1", "--no-progress",
                 "--out", str(tuned)]) == 0  # fmt: skip
    assert "macro avg" in capsys.readouterr().out
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"cats", "dogs"}
    assert metrics["accuracy"] > 0.8  # chance 0.5: the words tell the classes apart
    assert (tuned / "confusion.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classify"], "needs --init"),
        (["--init", "x.pt"], "add --classify"),
        (["--resume"], "no checkpoint"),
        (["--classify", "--init", "missing.pt"], "no such file"),
    ],
)
def test_errors_are_one_line(shards, tmp_path, capsys, extra, message):
    assert main(["train-lm", str(shards), *extra, "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastdata train-lm: error:") and message in err and "\n" not in err


def test_shards_without_a_token_index_are_refused(tmp_path, capsys):
    assert main(["train-lm", str(tmp_path / "none-{000000..000001}.tar"), "--out", str(tmp_path / "o")]) == 1
    assert "fastdata train-lm: error:" in capsys.readouterr().err
