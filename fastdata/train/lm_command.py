"""The ``fastdata train-lm`` command: pretrain a small GPT on token shards, or fine-tune one
as a classifier; and ``make_token_loaders``, the loaders it builds.

- Pretraining: ``GPT`` (``fastdata.train.gpt``) on packed rows (``TokenDataset`` in
  ``concat`` or ``aligned`` mode) with ``LanguageModeling``: loss and perplexity per epoch
  and per log step, tokens/s and the data-wait share, ``training.png``.
- Fine-tuning (``--classify``): ``GPTClassifier`` on one document per row (``padded``),
  its backbone loaded from ``--init`` (any checkpoint the pretraining wrote), frozen
  (``--freeze``) or all but its last N blocks (``--train-last N``); accuracy, precision,
  recall, F1, ``confusion.png``, as ``fastdata train`` reports them.

Both run ``fastdata.train.loop.fit``, so checkpoints resume exactly (``--resume``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from torch import nn

from fastdata.errors import FastdataError, SourceError
from fastdata.pictures.gallery import at_least
from fastdata.train.checkpoint import seed_everything
from fastdata.train.command import _positive_float
from fastdata.train.gpt import GPT, GPTClassifier, GPTConfig, gpt_config_of
from fastdata.train.loop import TrainResult, fit, write_report
from fastdata.train.metrics import format_report
from fastdata.train.tasks import Classification, LanguageModeling


def make_token_loaders(
    train: str | os.PathLike,
    val: str | os.PathLike | None = None,
    *,
    seq_len: int,
    batch_size: int,
    mode: str = "concat",
    workers: int = 2,
    seed: int = 0,
) -> tuple[Iterable, Iterable | None, dict]:
    """``fastdata.DataLoader``s over ``fastdata.TokenDataset``s of token shards.

    Args:
        train: an index ``.json`` or token shard paths / brace patterns.
        val: the same for validation; default: ``val.index.json`` beside a ``train``
            index, if it exists, else no validation.
        seq_len, mode: ``TokenDataset`` arguments (``"padded"`` for classification).
        batch_size, workers: ``DataLoader`` arguments.
        seed: the training order's seed (validation is read in order).

    Returns:
        ``(train_loader, val_loader or None, index)``; the index holds ``vocab_size`` and
        the ``labels`` map.

    Raises:
        SourceError: the shards have no index, or it is not a token index.
    """
    from fastdata.loading.dataloader import DataLoader
    from fastdata.loading.tokens import TokenDataset
    from fastdata.shards.index import resolve_shards

    if val is None and str(train).endswith(".json"):
        sibling = Path(train).with_name("val.index.json")
        val = sibling if sibling.exists() and sibling != Path(train) else None
    urls, path, index = resolve_shards(str(train))
    if not index or "vocab_size" not in index:
        raise SourceError(str(train), "has no token index (vocab_size); make the shards with"
                          " fastdata convert --tokenize")  # fmt: skip

    def loader(data: str, shuffle: bool, index_path: str | None) -> Iterable:
        ds = TokenDataset(data, seq_len, mode=mode, shuffle=shuffle, seed=seed, index=index_path)
        return DataLoader(ds, batch_size=batch_size, num_workers=workers)

    train_loader = loader(urls, True, path)
    val_loader = None
    if val is not None:
        val_urls, val_path, _ = resolve_shards(str(val))
        val_loader = loader(val_urls, False, val_path)
    return train_loader, val_loader, index


def class_names(index: dict) -> list[str]:
    """The class names of a token index's ``labels`` map, in label order."""
    labels = index.get("labels") or index.get("label_map") or {}
    return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``fastdata train-lm`` sub-command."""
    p = subparsers.add_parser("train-lm", help="pretrain a small GPT on token shards, or fine-tune it as a classifier",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("data", help="token shards (an index .json or .tar patterns) from fastdata convert --tokenize")
    p.add_argument("--val", help="validation token shards (default: val.index.json beside a train index)")
    p.add_argument("--seq-len", type=at_least(1), help="tokens per row (default 256; with --init, the model's)")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="rows per batch")
    p.add_argument("--layers", type=at_least(1), default=4, help="transformer blocks")
    p.add_argument("--heads", type=at_least(1), default=4, help="attention heads")
    p.add_argument("--dim", type=at_least(1), default=128, help="width of the model")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout")
    p.add_argument("--mode", choices=("concat", "aligned"), default="concat",
                   help="how pretraining packs documents into rows")  # fmt: skip
    p.add_argument("--epochs", type=at_least(1), default=1, help="total epochs (with --resume: up to this many)")
    p.add_argument("--steps", type=at_least(1), help="stop each epoch after this many steps")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate (AdamW; cosine over epochs)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="autocast (default: on CUDA)")
    p.add_argument("--classify", action="store_true", help="fine-tune a classifier on the shards' labels")
    p.add_argument("--init", metavar="PRETRAINED.pt", help="with --classify: the pretrained GPT (a checkpoint)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--freeze", action="store_true", help="with --classify: train the head only")
    group.add_argument("--train-last", type=at_least(0), metavar="N",
                       help="with --classify: train the head and the last N blocks")  # fmt: skip
    p.add_argument("--pool", choices=("mean", "last"), default="mean",
                   help="with --classify: the head reads the mean hidden state, or the last token's")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--out", default="fastdata-train-lm", help="output folder")
    p.add_argument("--workers", type=at_least(0), default=2, help="loader worker threads")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``fastdata train-lm``; returns the exit code (1, with a one-line message, on an
    error in the arguments, the data or a checkpoint)."""
    try:
        return _run(args)
    except (FastdataError, ValueError) as exc:  # TokenDataset raises ValueError on bad arguments
        print(f"fastdata train-lm: error: {exc}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace, last: Path) -> None:
    if args.resume and not last.is_file():
        raise FastdataError(f"--resume: no checkpoint at {last}; run once without --resume (same --out) first")
    if not args.classify and (args.init or args.freeze or args.train_last is not None):
        raise FastdataError("--init, --freeze and --train-last fine-tune: add --classify")
    if args.classify and not args.init:
        raise FastdataError("--classify needs --init PRETRAINED.pt (a checkpoint of fastdata train-lm)")
    if args.init and not Path(args.init).is_file():
        raise FastdataError(f"--init: no such file {args.init!r}")


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    last = out / "checkpoints" / "last.pt"
    _check(args, last)
    if args.classify:
        config = gpt_config_of(args.init)
    elif args.resume:
        config = gpt_config_of(last)
    else:
        config = None
    seq_len = args.seq_len or (config.seq_len if config else 256)
    if config is not None and seq_len > config.seq_len:
        raise FastdataError(f"--seq-len {seq_len} is longer than the model's {config.seq_len}")
    train_loader, val_loader, index = make_token_loaders(
        args.data, args.val, seq_len=seq_len, batch_size=args.batch_size,
        mode="padded" if args.classify else args.mode, workers=args.workers, seed=args.seed,
    )  # fmt: skip
    names = class_names(index)
    seed_everything(args.seed)  # the new weights are a function of --seed
    if args.classify:
        model, task = _classifier(args, config, names), Classification()
    else:
        config = config or GPTConfig(vocab_size=int(index["vocab_size"]), n_layer=args.layers,
                                     n_head=args.heads, n_embd=args.dim, seq_len=seq_len,
                                     dropout=args.dropout)  # fmt: skip
        model, task = GPT(config), LanguageModeling()
    if config.vocab_size < int(index["vocab_size"]):
        raise SourceError(args.data, f"has a vocabulary of {index['vocab_size']} tokens, the model"
                          f" {config.vocab_size}: tokenize with the pretraining's tokenizer")  # fmt: skip
    result = fit(model, train_loader, val_loader=val_loader, task=task, epochs=args.epochs,
                 lr=args.lr, optimizer="adamw", weight_decay=args.weight_decay,
                 steps_per_epoch=args.steps, device=args.device, amp=args.amp,
                 checkpoint_dir=out / "checkpoints", resume=last if args.resume else None,
                 seed=args.seed, progress=not args.no_progress)  # fmt: skip
    paths = write_report(result, names, out)
    print(summary(result, names))
    print(f"report in {os.path.dirname(paths['history'])}")
    return 0


def _classifier(args: argparse.Namespace, config: GPTConfig, names: list[str]) -> nn.Module:
    if len(names) < 2:
        raise SourceError(args.data, "has no labels (or one class): convert a manifest with a"
                          " label column to fine-tune a classifier")  # fmt: skip
    config = replace(config, dropout=args.dropout)
    model = GPTClassifier(config, num_classes=len(names), pool=args.pool)
    model.load_backbone(args.init)
    if args.freeze or args.train_last is not None:
        model.freeze(train_last=args.train_last or 0)
    return model


def summary(result: TrainResult, names: list[str]) -> str:
    """The lines ``fastdata train-lm`` prints at the end of a run."""
    lines = []
    if result.report is not None and hasattr(result.report, "confusion"):
        lines.append(format_report(result.report, names))
    first, last = result.steps[0]["loss"], result.steps[-1]["loss"]
    record = result.history[-1]
    line = f"train loss {first:.3f} -> {last:.3f} (first and last log step)"
    if "val_perplexity" in record:
        line += f"; validation loss {record['val_loss']:.3f}, perplexity {record['val_perplexity']:.2f}"
    lines.append(line)
    rate = (f"{result.tokens_per_sec:,.0f} tokens/s" if result.tokens_per_sec
            else f"{result.samples_per_sec:.1f} samples/s")  # fmt: skip
    lines.append(f"{rate}, {result.data_wait_share:.0%} of the time waiting for data")
    return "\n".join(lines)
