"""The ``fastdata train`` command: arguments into ``fit``, or into a grid search."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch import nn

from fastdata.errors import FastdataError
from fastdata.pictures.gallery import at_least
from fastdata.train.grid import format_table, grid_search, parse_grid
from fastdata.train.loop import IMAGENET_MEAN, IMAGENET_STD, fit, make_loaders, write_report
from fastdata.train.metrics import format_report
from fastdata.train.models import build_model, freeze


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``fastdata train`` sub-command."""
    p = subparsers.add_parser("train", help="train or fine-tune a torchvision classifier",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("data", help="shards (an index .json or .tar patterns), an image folder "
                   "(root/<class>/<image>), or a folder with train/ and val/")
    p.add_argument("--val", help="validation shards or image folder (default: val.index.json beside a "
                   "train index; for a folder, 10%% of DATA held out)")
    p.add_argument("--model", default="resnet18", help="torchvision model name")
    p.add_argument("--epochs", type=at_least(1), default=3, help="total epochs (with --resume: up to this many)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="samples per batch")
    p.add_argument("--lr", type=_positive_float, default=0.1, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="optimiser")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    p.add_argument("--image-size", type=at_least(1), default=224, help="side of the square crops")
    p.add_argument("--workers", type=at_least(0), default=2, help="DataLoader worker processes")
    p.add_argument("--steps-per-epoch", type=at_least(1), help="stop each epoch after this many steps")
    p.add_argument("--checkpoint", help="local weights to start from (fine-tuning); no downloads")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    p.add_argument("--train-last", type=at_least(0), default=0, metavar="N",
                   help="with --freeze-backbone, also train the last N blocks")  # fmt: skip
    p.add_argument("--grid", nargs="+", metavar="NAME=V1,V2",
                   help="grid search, e.g. --grid lr=1e-3,3e-4 batch_size=64,128")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--out", default="fastdata-train", help="output folder")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def _model_from_args(args: argparse.Namespace, num_classes: int) -> nn.Module:
    model = build_model(args.model, num_classes=num_classes, checkpoint=args.checkpoint)
    if args.freeze_backbone:
        freeze(model, train_last=args.train_last)
    return model


def _fit_kwargs(args: argparse.Namespace) -> dict:
    return {
        "epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer,
        "weight_decay": args.weight_decay, "steps_per_epoch": args.steps_per_epoch,
        "device": args.device, "normalize": (IMAGENET_MEAN, IMAGENET_STD),
        "progress": not args.no_progress, "seed": args.seed,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Runs ``fastdata train``; returns the exit code (1, with a one-line message, on an
    error in the arguments, the data or a checkpoint)."""
    try:
        return _run(args)
    except FastdataError as exc:
        print(f"fastdata train: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    last = out / "checkpoints" / "last.pt"
    if args.resume and not last.is_file():
        raise FastdataError(f"--resume: no checkpoint at {last}; run once without --resume"
                            " (same --out) first")  # fmt: skip
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise FastdataError(f"--checkpoint: no such file {args.checkpoint!r}")
    grid = parse_grid(args.grid) if args.grid else None
    loader_kw = {"batch_size": args.batch_size, "image_size": args.image_size,
                 "workers": args.workers, "seed": args.seed}  # fmt: skip
    train_loader, val_loader, classes = make_loaders(args.data, args.val, **loader_kw)
    if args.grid:
        rows = grid_search(
            grid,
            lambda **kw: make_loaders(args.data, args.val, **{**loader_kw, **kw})[:2],
            lambda: _model_from_args(args, len(classes)),
            **{**_fit_kwargs(args), "seed": args.seed},
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "grid.json").write_text(json.dumps(rows, indent=1))
        (out / "grid.md").write_text(format_table(rows) + "\n")
        print(format_table(rows))
        return 0
    model = _model_from_args(args, len(classes))
    result = fit(model, train_loader, val_loader=val_loader, **_fit_kwargs(args),
                 checkpoint_dir=out / "checkpoints", resume=last if args.resume else None)  # fmt: skip
    paths = write_report(result, classes, out)
    if result.report is not None:
        print(format_report(result.report, classes))
    print(f"{result.samples_per_sec:.1f} samples/s, {result.data_wait_share:.0%} of the time"
          f" waiting for data; report in {paths['history'].rsplit('/', 1)[0]}")  # fmt: skip
    return 0
