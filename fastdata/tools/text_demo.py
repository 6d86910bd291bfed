"""The text part of ``fastdata demo``: a language model pretrained and fine-tuned from token
shards, on a corpus that ships with Python (``fastdata.tools.sample_text``), offline.

1. the corpus: reference passages and library docstrings labelled by their library, as
   train/validation JSONL manifests (held-out documents);
2. ``fastdata convert --tokenize bytes`` into token shards (``convert_tokens``);
3. a small ``GPT`` pretrained on packed rows of the training documents (``TokenDataset``
   concat mode, ``LanguageModeling``): loss and perplexity;
4. the pretrained backbone, all but its last block frozen, fine-tuned as a
   ``GPTClassifier`` on one document per row (padded mode): accuracy, precision, recall,
   F1 and the confusion matrix on the held-out documents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fastdata.convert.tokenize import TokenizeOptions, convert_tokens
from fastdata.train.gpt import GPT, GPTClassifier, GPTConfig, gpt_config_of
from fastdata.train.lm_command import class_names, make_token_loaders
from fastdata.train.loop import fit, write_report
from fastdata.train.tasks import Classification, LanguageModeling


@dataclass(frozen=True)
class TextBudget:
    """How much the text demo trains (the defaults take a few minutes on 2 CPU cores).

    Attributes:
        per_class: documents per class (4 classes; a fifth of them held out).
        max_chars: documents are cut to this many characters (bytes, mostly).
        seq_len: tokens (bytes) per row, in pretraining and classification.
        batch_size: rows per batch.
        pretrain_epochs, pretrain_steps: pretraining length (steps: per epoch, None = all).
        finetune_epochs, finetune_lr: classification fine-tuning (AdamW, cosine).
        train_last: backbone blocks fine-tuned with the head (the embeddings stay frozen).
        pool: what the classification head reads (``GPTClassifier``'s ``pool``).
        model: the GPT's ``n_layer``, ``n_head`` and ``n_embd``.
    """

    per_class: int = 200
    max_chars: int = 1000
    seq_len: int = 256
    batch_size: int = 8
    pretrain_epochs: int = 3
    pretrain_steps: int | None = None
    finetune_epochs: int = 5
    finetune_lr: float = 3e-3
    train_last: int = 2
    pool: str = "mean"
    model: tuple[int, int, int] = (2, 4, 96)


FULL = TextBudget(per_class=300, max_chars=2000, pretrain_epochs=3, finetune_epochs=6, train_last=2,
                  model=(4, 4, 128))  # fmt: skip


def text_shards(out: Path, budget: TextBudget, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Steps 1-2: the manifests and their token shards (``train``/``val`` index paths)."""
    from fastdata.tools.sample_text import make_text_corpus

    corpus = make_text_corpus(out / "data" / "text", per_class=budget.per_class, max_chars=budget.max_chars,
                              seed=seed)  # fmt: skip
    result = {"corpus": corpus}
    for split in ("train", "val"):
        pattern = str(out / "data" / "text-shards" / f"{split}-%06d.tar")
        report = convert_tokens(corpus[split], pattern, TokenizeOptions(tokenizer="bytes", tokens_per_shard=1 << 18))
        result[split] = report.index_path
        result[f"{split}_tokens"] = report.tokens
        log(f"{split}: {report.documents} documents, {report.tokens:,} byte tokens in {len(report.shards)} shards")
    return result


def pretrain(data: dict, out: Path, budget: TextBudget, seed: int) -> tuple[GPT, dict[str, Any]]:
    """Step 3: the GPT pretrained on packed rows; returns it and its figures."""
    train, val, index = make_token_loaders(data["train"], data["val"], seq_len=budget.seq_len,
                                           batch_size=budget.batch_size, mode="concat", seed=seed)  # fmt: skip
    n_layer, n_head, n_embd = budget.model
    config = GPTConfig(vocab_size=int(index["vocab_size"]), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                       seq_len=budget.seq_len)  # fmt: skip
    torch.manual_seed(seed)
    model = GPT(config)
    result = fit(model, train, val_loader=val, task=LanguageModeling(), epochs=budget.pretrain_epochs,
                 steps_per_epoch=budget.pretrain_steps, lr=2e-3, optimizer="adamw", weight_decay=0.01,
                 device="cpu", seed=seed, log_every=10, checkpoint_dir=out / "pretraining" / "checkpoints",
                 progress=False)  # fmt: skip
    paths = write_report(result, [], out / "pretraining")
    last = result.history[-1]
    return model, {
        "config": asdict(config), "paths": paths, "history": result.history, "checkpoint": result.checkpoint,
        "loss_start": result.steps[0]["loss"], "loss_end": result.steps[-1]["loss"],
        "uniform_loss": float(torch.log(torch.tensor(float(config.vocab_size)))),
        "val_loss": last["val_loss"], "val_perplexity": last["val_perplexity"],
        "tokens_per_sec": result.tokens_per_sec, "data_wait_share": result.data_wait_share,
    }  # fmt: skip


def fine_tune(data: dict, out: Path, budget: TextBudget, checkpoint: str, seed: int) -> dict[str, Any]:
    """Step 4: a classifier on the pretrained backbone, evaluated on held-out documents."""
    train, val, index = make_token_loaders(data["train"], data["val"], seq_len=budget.seq_len,
                                           batch_size=budget.batch_size, mode="padded", seed=seed)  # fmt: skip
    names = class_names(index)
    torch.manual_seed(seed)
    model = GPTClassifier(gpt_config_of(checkpoint), num_classes=len(names), pool=budget.pool)
    model.load_backbone(checkpoint)
    model.freeze(train_last=budget.train_last)
    result = fit(model, train, val_loader=val, task=Classification(), epochs=budget.finetune_epochs,
                 lr=budget.finetune_lr,
                 optimizer="adamw", weight_decay=0.01, device="cpu", seed=seed, log_every=10,
                 checkpoint_dir=out / "classifier" / "checkpoints", progress=False)  # fmt: skip
    paths = write_report(result, names, out / "classifier")
    return {"paths": paths, "history": result.history, "classes": names, "chance": 1 / len(names),
            "report": result.report.to_dict(names), "accuracy": result.report.accuracy,
            "macro_f1": result.report.macro_f1, "samples_per_sec": result.samples_per_sec,
            "data_wait_share": result.data_wait_share}  # fmt: skip


def run_text_demo(out: str | Path, budget: TextBudget = TextBudget(), *, seed: int = 0,
                  log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Runs steps 1-4 under ``out``; returns their figures (``data``, ``pretraining``,
    ``classifier``)."""
    out = Path(out)
    log("text 1-2. corpus from pydoc topics and library docstrings; convert --tokenize bytes")
    data = text_shards(out, budget, seed, log)
    log("text 3. pretraining a GPT on packed rows")
    _, pretrained = pretrain(data, out / "text", budget, seed)
    log(f"loss {pretrained['loss_start']:.2f} -> {pretrained['loss_end']:.2f}; validation perplexity"
        f" {pretrained['val_perplexity']:.2f}")  # fmt: skip
    log("text 4. fine-tuning it as a classifier of the documents' library")
    classifier = fine_tune(data, out / "text", budget, pretrained["checkpoint"], seed)
    log(f"held-out accuracy {classifier['accuracy']:.1%} (chance {classifier['chance']:.0%})")
    return {"data": data, "budget": asdict(budget), "pretraining": pretrained, "classifier": classifier}


def text_section(text: dict, rel: Callable[[str], str]) -> list[str]:
    """The ``REPORT.md`` lines of the text part."""
    data, pre, clf = text["data"], text["pretraining"], text["classifier"]
    corpus = data["corpus"]
    c = pre["config"]
    return [
        "## Language model", "",
        f"{corpus['train_documents']} training and {corpus['val_documents']} held-out documents in "
        f"{len(corpus['classes'])} classes ({', '.join(corpus['classes'])}): Python reference passages "
        "(`pydoc_data.topics`) and docstrings of installed libraries, labelled by library; tokenized "
        f"with the byte-level tokenizer into {data['train_tokens']:,} + {data['val_tokens']:,} tokens.", "",
        f"Pretraining: a GPT of {c['n_layer']} blocks, {c['n_head']} heads, width {c['n_embd']}, rows of "
        f"{c['seq_len']} bytes; the training loss fell from **{pre['loss_start']:.2f} to {pre['loss_end']:.2f}** "
        f"nats per byte (uniform guess: {pre['uniform_loss']:.2f}); held-out perplexity "
        f"{pre['val_perplexity']:.2f}; {pre['tokens_per_sec']:,.0f} tokens/s with "
        f"{pre['data_wait_share']:.1%} of the time waiting for data.", "",
        f"![pretraining]({rel(pre['paths']['training_png'])})", "",
        f"Fine-tuning the pretrained model as a classifier of the document's library (the last "
        f"{text['budget']['train_last']} block(s) and a new head train, the rest is frozen): held-out accuracy "
        f"**{clf['accuracy']:.1%}** (chance {clf['chance']:.0%}), macro F1 {clf['macro_f1']:.3f}.", "",
        f"![fine-tuning]({rel(clf['paths']['training_png'])})", "",
        f"![confusion]({rel(clf['paths']['confusion_png'])})", "",
    ]  # fmt: skip
