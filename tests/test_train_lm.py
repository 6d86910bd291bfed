"""Tests of language-model training through ``fit`` (fastdata.train.tasks): pretraining on
packed token batches, exact resume, classification fine-tuning on padded batches, reports."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lm_batches import ShuffledBatches, documents, packed, padded

from fastdata.errors import FastdataError
from fastdata.train.feed import Feed
from fastdata.train.gpt import GPT, GPTClassifier, GPTConfig
from fastdata.train.loop import fit, write_report
from fastdata.train.tasks import LanguageModeling

VOCAB = 40
CONFIG = GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, seq_len=32)


def test_pretraining_learns_and_reports_tokens_and_perplexity(tmp_path):
    train = packed(documents(400, VOCAB, seed=1), batch_size=8, seq_len=32)
    val = packed(documents(60, VOCAB, seed=2), batch_size=8, seq_len=32)
    torch.manual_seed(0)
    model = GPT(CONFIG)
    result = fit(model, train, val_loader=val, task=LanguageModeling(), epochs=2, lr=1e-2,
                 optimizer="adamw", weight_decay=0.0, log_every=2, progress=False)  # fmt: skip
    first, last = result.history
    assert result.steps[0]["loss"] > math.log(VOCAB) - 0.5  # about uniform at the start
    assert last["val_loss"] < 0.5 * first["train_loss"] and last["val_accuracy"] > 0.8
    assert last["val_perplexity"] == pytest.approx(math.exp(last["val_loss"]))
    assert last["train_perplexity"] == pytest.approx(math.exp(last["train_loss"]))
    # Tokens are the target tokens; samples are rows.
    targets = sum(int((b["targets"] != -100).sum()) for b in train)
    assert first["tokens"] == targets and first["samples"] == 8 * len(train)
    assert result.tokens_per_sec > 0 and 0 <= result.data_wait_share < 1
    # The validation loss is the mean cross-entropy over every target token (reference).
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(b["input_ids"], b["position_ids"], b["segment_ids"]) for b in val])
    targets = torch.cat([b["targets"] for b in val])
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert result.report.loss == pytest.approx(ref.item(), rel=1e-5)
    paths = write_report(result, [], tmp_path)
    assert "confusion_png" not in paths and (tmp_path / "training.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "metrics.json").read_text())["perplexity"] == pytest.approx(
        result.report.perplexity
    )


def test_pretraining_resumes_exactly(tmp_path):
    batches = ShuffledBatches(packed(documents(80, VOCAB, seed=3), batch_size=4, seq_len=32))
    config = GPTConfig(**{**CONFIG.__dict__, "dropout": 0.1})  # dropout draws from the RNG
    kw = {"task": LanguageModeling(), "lr": 1e-3, "optimizer": "adamw", "progress": False}

    torch.manual_seed(5)
    whole = GPT(config)
    fit(whole, batches, epochs=2, seed=1, **kw)
    torch.manual_seed(5)
    part = GPT(config)
    fit(part, batches, epochs=1, seed=1, checkpoint_dir=tmp_path, **kw)
    torch.manual_seed(99)
    resumed = GPT(config)
    result = fit(resumed, batches, epochs=2, resume=tmp_path / "last.pt", **kw)
    assert len(result.history) == 2 and "tokens" in result.history[0]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)


def test_fine_tuning_a_classifier_on_padded_batches(tmp_path):
    # Class c counts through its own range of 13 token ids.
    docs, labels = [], []
    for c in range(3):
        docs += [[13 * c + t for t in d] for d in documents(64, 13, seed=10 + c, lengths=(6, 20))]
        labels += [c] * 64
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(0)).tolist()
    docs, labels = [docs[i] for i in order], [labels[i] for i in order]
    train = padded(docs[:144], labels[:144], batch_size=12, seq_len=24)
    val = padded(docs[144:], labels[144:], batch_size=12, seq_len=24)
    torch.manual_seed(0)
    model = GPTClassifier(CONFIG, num_classes=3)
    model.freeze(train_last=2)
    result = fit(model, train, val_loader=val, epochs=4, lr=3e-3, optimizer="adamw",
                 weight_decay=0.0, progress=False)  # fmt: skip
    assert result.report.accuracy > 0.7  # chance 1/3
    assert result.history[-1]["val_macro_f1"] > 0.6
    paths = write_report(result, ["one", "two", "three"], tmp_path)
    assert {"confusion_png", "metrics", "training_png"} <= set(paths)


def test_bad_token_batches_are_errors():
    model = GPT(CONFIG)
    with pytest.raises(FastdataError, match="targets"):
        fit(model, [{"input_ids": torch.zeros(2, 4, dtype=torch.long)}],
            task=LanguageModeling(), progress=False)  # fmt: skip
    with pytest.raises(FastdataError, match="labels"):
        fit(GPTClassifier(CONFIG, 2), [{"input_ids": torch.zeros(2, 4, dtype=torch.long)}],
            progress=False)  # fmt: skip
    with pytest.raises(FastdataError, match="no target token"):
        LanguageModeling().evaluate(model, [], Feed("cpu"))


def test_a_batch_without_targets_adds_nothing():
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long),
             "targets": torch.full((2, 5), -100)}  # fmt: skip
    out = LanguageModeling().step(GPT(CONFIG), batch)
    assert out.loss.item() == 0.0 and int(out.units) == 0 and out.samples == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pretraining_on_cuda_with_amp():
    train = packed(documents(400, VOCAB, seed=1), batch_size=8, seq_len=32)
    torch.manual_seed(0)
    model = GPT(CONFIG)
    result = fit(model, train, val_loader=train[:4], task=LanguageModeling(), epochs=2, lr=1e-2,
                 optimizer="adamw", weight_decay=0.0, device="cuda", amp=True, progress=False)  # fmt: skip
    assert next(model.parameters()).is_cuda
    assert result.history[-1]["val_loss"] < 0.5 * result.history[0]["train_loss"]
