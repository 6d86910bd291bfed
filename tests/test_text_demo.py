"""The text part of the demo on a tiny budget, and the corpus it is built from."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fastdata.tools.demo import run_demo
from fastdata.tools.sample_text import make_text_corpus
from fastdata.tools.text_demo import TextBudget


def test_corpus_is_balanced_labelled_and_split_without_overlap(tmp_path):
    info = make_text_corpus(tmp_path, per_class=30, max_chars=500, seed=1)
    assert info["classes"] == ["numpy", "python-reference", "stdlib", "torch"]
    rows = {s: [json.loads(line) for line in open(info[s])] for s in ("train", "val")}
    for split, n in (("train", 24), ("val", 6)):
        counts = {c: sum(r["label"] == c for r in rows[split]) for c in info["classes"]}
        assert counts == dict.fromkeys(info["classes"], n)
    texts = [r["text"] for s in rows.values() for r in s]
    assert len(set(texts)) == len(texts)  # no duplicate, so no held-out text was trained on
    assert all(200 <= len(t) <= 500 for t in texts)
    numpy_docs = [r["text"] for r in rows["train"] if r["label"] == "numpy"]
    assert sum("Parameters\n----------" in t for t in numpy_docs) > len(numpy_docs) // 3


def _run(tmp_path, budget: TextBudget) -> tuple[dict, str]:
    report = run_demo(str(tmp_path / "report"), images=False, text=budget)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["text"]
    text = open(report).read()
    assert "## Language model" in text and "chance 25%" in text
    for png in ("text/pretraining/training.png", "text/classifier/training.png",
                "text/classifier/confusion.png"):  # fmt: skip
        assert f"]({png})" in text
        with Image.open(tmp_path / "report" / png) as image:
            assert image.format == "PNG"
    return summary, text


def test_tiny_text_demo_runs_every_step(tmp_path):
    # Too little training to tell the libraries apart: this checks the plumbing and the
    # pretraining; test_text_demo_beats_chance checks the classifier.
    budget = TextBudget(per_class=12, max_chars=300, seq_len=64, batch_size=8, pretrain_steps=20,
                        finetune_epochs=1, train_last=1, model=(1, 2, 32))  # fmt: skip
    summary, _ = _run(tmp_path, budget)
    pre, clf = summary["pretraining"], summary["classifier"]
    assert pre["loss_end"] < pre["loss_start"] - 0.5  # from about log(258) = 5.55 nats per byte
    assert clf["chance"] == 0.25 and 0 <= clf["accuracy"] <= 1
    assert summary["data"]["corpus"]["val_documents"] == 4 * 2


@pytest.mark.slow
def test_text_demo_beats_chance(tmp_path):
    # The demo's default budget (a few minutes on 2 CPU cores): 160 held-out documents.
    summary, _ = _run(tmp_path, TextBudget())
    pre, clf = summary["pretraining"], summary["classifier"]
    assert pre["loss_end"] < pre["loss_start"] - 1.0
    assert clf["accuracy"] > 2 * clf["chance"]
