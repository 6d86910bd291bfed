"""A minimal trainer: one visible loop, evaluation, checkpoints, and ``fastdata train``.

``fit`` trains any ``nn.Module`` classifier on any iterable of ``(images, labels)`` batches
(torch's DataLoader, fastdata's DataLoader, a list). Images may be float tensors ready for the
model, or uint8 tensors (NCHW, or NHWC with 1 or 3 channels) that are converted and normalised
on the device, after the transfer, as DESIGN.md's data flow wants. The same loop trains a
language model on token batches (dicts): a ``task`` (``fastdata.train.tasks``) says what the
loss is and how to evaluate; the loop, its checkpoints and its throughput figures are shared.

NOTE [ Prefetch and the data-wait share ]
CUDA runs kernels asynchronously: once the forward pass is queued, the host is free, and the
loop uses that moment to fetch the next batch and start its non-blocking copy. The time spent
inside that fetch is the time the step waited for data; divided by the wall time of the epoch
it gives the data-wait share. Near 0 the model is the bottleneck; near 1 the loader is. The
loop synchronises with the device only every ``log_every`` steps (reading the loss) and at the
end of the epoch, so the wall time is not inflated by needless synchronisation.

NOTE [ Exact resume ]
A checkpoint is written after each epoch (after evaluation) with the model, optimiser,
scheduler, grad scaler, the random states of torch, NumPy and Python, and the train loader's
``state_dict()`` if it has one. The loader's shuffle (torch's samplers draw their seed from
the global torch generator) and every random transform therefore replay exactly: training
E epochs, or K epochs then resuming for E - K, gives the same weights.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from fastdata.errors import FastdataError, SourceError
from fastdata.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from fastdata.train.feed import Feed
from fastdata.train.metrics import ClassificationReport
from fastdata.train.models import make_optimizer
from fastdata.train.tasks import Classification, LMReport, Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainResult:
    """What ``fit`` returns.

    Attributes:
        history: one dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``, ``lr``,
            ``samples``, ``seconds``, ``samples_per_sec``, ``data_wait_share`` and, with a
            validation loader, ``val_loss``, ``val_accuracy``, ``val_macro_precision``,
            ``val_macro_recall``, ``val_macro_f1``. Language modelling (``LanguageModeling``)
            adds ``tokens``, ``tokens_per_sec``, ``train_perplexity`` and ``val_perplexity``
            (its losses and accuracies are per target token, its samples are rows).
        steps: ``{"step", "epoch", "loss"}`` every ``log_every`` steps (mean loss since the
            previous entry).
        report: the last validation report (a ``ClassificationReport``, or an ``LMReport``
            for language modelling), or None without a validation loader.
        checkpoint: path of the last checkpoint written, if any.
    """

    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    report: ClassificationReport | LMReport | None = None
    checkpoint: str | None = None

    @property
    def samples_per_sec(self) -> float:
        """Training throughput over all epochs of the history."""
        seconds = sum(h["seconds"] for h in self.history)
        return sum(h["samples"] for h in self.history) / seconds if seconds else 0.0

    @property
    def data_wait_share(self) -> float:
        """Share of training wall time spent waiting for data, over all epochs."""
        seconds = sum(h["seconds"] for h in self.history)
        wait = sum(h["data_wait_share"] * h["seconds"] for h in self.history)
        return wait / seconds if seconds else 0.0

    @property
    def tokens_per_sec(self) -> float:
        """Training tokens per second over all epochs (0 when the task counts no tokens)."""
        seconds = sum(h["seconds"] for h in self.history)
        return sum(h.get("tokens", 0) for h in self.history) / seconds if seconds else 0.0


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    val_loader: Iterable | None = None,
    epochs: int = 1,
    lr: float = 0.1,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    scheduler: str | None = "cosine",
    label_smoothing: float = 0.0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    normalize: tuple | None = None,
    steps_per_epoch: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    seed: int | None = None,
    log_every: int = 20,
    progress: bool | str = True,
    task: Task | None = None,
) -> TrainResult:
    """Trains a model on a task; evaluates and checkpoints after each epoch.

    Args:
        model: any classifier returning logits ``(N, classes)`` (the default task), or a
            language model returning ``(B, T, vocab)`` logits (``LanguageModeling``).
        train_loader: iterable of ``(images, labels)`` batches or token batches (dicts),
            re-iterated each epoch.
        val_loader: optional iterable of validation batches.
        epochs: total number of epochs (a resumed run continues up to this number).
        lr, optimizer, weight_decay, momentum: see ``fastdata.train.models.make_optimizer``; the
            optimiser covers the trainable parameters only.
        scheduler: ``"cosine"`` (per epoch, down to 0 at ``epochs``) or None (constant).
        label_smoothing: cross-entropy label smoothing of the default task.
        device: default CUDA if available, else CPU.
        amp: autocast (bfloat16, or float16 with a grad scaler); default on for CUDA.
        channels_last: channels-last memory format; default on for CUDA.
        normalize: ``(mean, std)`` applied to uint8 batches on the device, after scaling to
            [0, 1]; float batches are used as they are.
        steps_per_epoch: stop each epoch after this many steps (a short run).
        checkpoint_dir: if set, ``last.pt`` is written there after every epoch.
        resume: a checkpoint to continue from (see NOTE [ Exact resume ]).
        seed: seeds torch, NumPy and Python's generators at the start (not when resuming).
        log_every: steps between loss readings (each one synchronises with the device).
        progress: show a progress bar; a string is shown in front of the epoch (a label,
            such as a grid-search combination).
        task: what to learn (``fastdata.train.tasks``); default
            ``Classification(label_smoothing)``.

    Raises:
        FastdataError: an argument is out of range.
    """
    if scheduler not in ("cosine", None) or log_every < 1:
        raise FastdataError(
            f"need scheduler 'cosine' or None and log_every >= 1; got {scheduler!r}, {log_every}"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise FastdataError(f"epochs must be an integer of at least 1, got {epochs!r}")
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise FastdataError(f"steps_per_epoch must be at least 1 or None, got {steps_per_epoch!r}")
    label = f"{progress} " if isinstance(progress, str) else ""
    task = task if task is not None else Classification(label_smoothing)
    feed = Feed(device, amp=amp, channels_last=channels_last, normalize=normalize)
    device = feed.device
    fmt = torch.channels_last if feed.channels_last else torch.preserve_format
    model.to(device, memory_format=fmt)
    opt = make_optimizer(model, optimizer, lr, weight_decay, momentum)
    sched = _cosine(opt, epochs) if scheduler == "cosine" else None
    scaler = torch.amp.GradScaler(device.type, enabled=feed.needs_grad_scaler)
    result = TrainResult()
    if resume is not None:
        result.history, result.steps = load_checkpoint(
            resume, model, opt, sched, scaler, train_loader
        )
        if sched is not None:
            _restretch(sched)
    elif seed is not None:
        seed_everything(seed)
    step = result.steps[-1]["step"] if result.steps else 0
    for epoch in range(len(result.history), epochs):
        model.train()
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a DistributedSampler reshuffles per epoch
        total = _length(train_loader, steps_per_epoch)
        bar = tqdm(total=total, desc=f"{label}epoch {epoch + 1}/{epochs}", disable=not progress)
        # loss_sum, correct and units (the terms the loss averages) stay on the device.
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        logged_loss, logged_units, samples, wait, n = 0.0, 0.0, 0, 0.0, 0
        start = time.perf_counter()
        batches = iter(train_loader)
        batch, waited = feed.next(batches)
        wait += waited
        while batch is not None:
            with feed.autocast():
                out = task.step(model, batch)
            # Fetch the next batch while the device computes (NOTE [ Prefetch and the ...]).
            n += 1
            batch, waited = (None, 0.0) if n == steps_per_epoch else feed.next(batches)
            wait += waited
            opt.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.step(opt)
            scaler.update()
            sums[0] += out.loss.detach() * out.units
            sums[1] += out.correct
            sums[2] += out.units
            samples += out.samples
            step += 1
            if step % log_every == 0 or batch is None:
                seen, _, units = sums.tolist()  # synchronises with the device
                result.steps.append(
                    {"step": step, "epoch": epoch + (n / total if total else 1.0),
                     "loss": (seen - logged_loss) / max(units - logged_units, 1)}
                )  # fmt: skip
                logged_loss, logged_units = seen, units
                elapsed = time.perf_counter() - start
                rate = {"tok_s" if task.unit == "tokens" else "sps": f"{units / elapsed:.0f}"}
                bar.set_postfix(loss=f"{result.steps[-1]['loss']:.3f}", **rate,
                                wait=f"{wait / elapsed:.0%}")  # fmt: skip
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        bar.close()
        loss_sum, correct, units = sums.tolist()
        record = _epoch_record(epoch, opt, loss_sum, correct, units, samples, seconds, wait)
        record.update(task.train_record(record["train_loss"], units, seconds))
        if sched is not None:
            sched.step()
        if val_loader is not None:
            result.report = task.evaluate(model, val_loader, feed)
            record.update(task.val_record(result.report))
        result.history.append(record)
        if checkpoint_dir is not None:
            result.checkpoint = save_checkpoint(
                Path(checkpoint_dir) / "last.pt",
                model,
                opt,
                sched,
                scaler,
                train_loader,
                result.history,
                result.steps,
            )
    return result


def _epoch_record(
    epoch: int,
    opt: torch.optim.Optimizer,
    loss_sum: float,
    correct: float,
    units: float,
    samples: int,
    seconds: float,
    wait: float,
) -> dict:
    return {
        "epoch": epoch + 1,
        "lr": opt.param_groups[0]["lr"],
        "train_loss": loss_sum / max(units, 1),
        "train_accuracy": correct / max(units, 1),
        "samples": samples,
        "seconds": seconds,
        "samples_per_sec": samples / seconds if seconds else 0.0,
        "data_wait_share": wait / seconds if seconds else 0.0,
    }


def _cosine(opt: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay over ``epochs``, a function of the epoch index only, so that a resumed
    run that asks for more epochs stretches the schedule instead of restarting it."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.5 * (1 + math.cos(math.pi * min(e, epochs) / max(epochs, 1)))
    )


def _restretch(sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Sets the learning rate a resumed run starts with from this run's schedule.

    NOTE [ Stretching the schedule on resume ]
    The optimiser's saved state holds the learning rate the *old* schedule gave for the next
    epoch (0 at its end), and ``LambdaLR`` only recomputes it at the next ``step()``: a run
    resumed with a larger ``epochs`` would train its first new epoch at the old schedule's
    rate. Recomputing it from the current schedule (a function of the epoch index only)
    gives the rate an uninterrupted run with the larger ``epochs`` uses for that epoch.
    """
    epoch = sched.last_epoch
    lrs = [base * fn(epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
    for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    sched._last_lr = lrs  # what get_last_lr() reports


def _length(loader: Iterable, steps_per_epoch: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return steps_per_epoch
    return min(n, steps_per_epoch) if steps_per_epoch else n


def make_loaders(
    train: str | os.PathLike,
    val: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    image_size: int = 224,
    workers: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[Iterable, Iterable, list[str]]:
    """Builds the train and validation loaders of ``fastdata train``.

    Shards (an index ``.json`` or shard paths/patterns) stream through
    ``fastdata.ShardDataset`` and ``fastdata.DataLoader`` (see ``make_shard_loaders``).
    Otherwise it reads an ImageFolder directory (``root/<class>/<image>``) with torchvision's ImageFolder,
    RandomResizedCrop + flip for training and resize + centre crop for validation, and
    torch's DataLoader. Batches hold uint8 images, normalised on the device by ``fit``.

    Args:
        train: the training folder, or a folder with ``train/`` and ``val/`` sub-folders.
        val: the validation folder; without one, a seeded ``val_fraction`` of ``train``.
        batch_size, workers: DataLoader arguments.
        image_size: side of the square crops.
        val_fraction: share of ``train`` held out when there is no validation folder.
        seed: seed of that split.

    Returns:
        ``(train_loader, val_loader, class_names)``.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("image_size", image_size, 1),
                             ("workers", workers, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise FastdataError(f"{name} must be an integer of at least {low}, got {value!r}")
    if is_shards(train):
        return make_shard_loaders(train, val, batch_size=batch_size, image_size=image_size,
                                  workers=workers, seed=seed)  # fmt: skip
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms as T

    root = Path(train)
    if val is None and (root / "train").is_dir() and (root / "val").is_dir():
        root, val = root / "train", root / "val"
    if not root.is_dir():
        raise SourceError(str(root), "is not an image folder (root/<class>/<image>.jpg)")
    train_tf = T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.PILToTensor()]
    )
    val_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.PILToTensor()])  # fmt: skip
    train_set = _image_folder(root, train_tf)
    classes = train_set.classes
    if val is not None:
        val_set = _image_folder(Path(val), val_tf)
        if val_set.classes != classes:
            raise SourceError(str(val), f"has classes {val_set.classes}, train has {classes}")
    else:
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(len(train_set) * val_fraction))
        val_set = Subset(_image_folder(root, val_tf), order[:n_val].tolist())
        train_set = Subset(train_set, order[n_val:].tolist())
    common = {
        "batch_size": batch_size,
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
    }
    # Every sample trains each epoch, as from shards; only a last batch of a single sample
    # is dropped (BatchNorm cannot train on a batch of one).
    train_loader = DataLoader(
        train_set, shuffle=True, drop_last=len(train_set) % batch_size == 1, **common
    )
    return train_loader, DataLoader(val_set, **common), classes


def _image_folder(root: Path, transform) -> object:
    """torchvision's ImageFolder, with a ``SourceError`` naming the folder when it is
    missing or holds no class folder with images."""
    from torchvision import datasets

    if not root.is_dir():
        raise SourceError(str(root), "is not an image folder (root/<class>/<image>.jpg)")
    try:
        return datasets.ImageFolder(str(root), transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SourceError(str(root), f"holds no images in class folders (root/<class>/<image>.jpg): {exc}") from exc


def is_shards(data: str | os.PathLike) -> bool:
    """Whether ``data`` names shards (an index ``.json`` or ``.tar`` paths/patterns)."""
    text = str(data)
    return text.endswith(".json") or ".tar" in text or text.startswith("pipe:")


def make_shard_loaders(
    train: str | os.PathLike,
    val: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    image_size: int = 224,
    workers: int = 2,
    seed: int = 0,
) -> tuple[Iterable, Iterable | None, list[str]]:
    """Loaders streaming shards through the compiled transforms, uint8 until the device.

    Args:
        train: an index ``.json`` or shard paths / brace patterns.
        val: the same for validation; default: ``val.index.json`` beside a ``train``
            index, if it exists, else no validation.

    Returns:
        ``(train_loader, val_loader or None, class_names)``; class names come from the
        index's label map (``"0"``, ``"1"``... without one).
    """
    from fastdata import transforms as T
    from fastdata.loading.dataloader import DataLoader
    from fastdata.loading.shard_dataset import ShardDataset
    from fastdata.shards.index import resolve_shards

    def resolve(data) -> tuple[list[str], dict | None]:
        urls, _, index = resolve_shards(str(data))
        return urls, index

    if val is None and str(train).endswith(".json"):
        sibling = Path(train).with_name("val.index.json")
        val = sibling if sibling.exists() and sibling != Path(train) else None
    urls, index = resolve(train)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()])
    val_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)])
    common = {"batch_size": batch_size, "num_workers": workers}
    train_loader = DataLoader(ShardDataset(urls, transform=train_tf, shuffle=True, seed=seed), **common)
    val_loader = None
    if val is not None:
        val_loader = DataLoader(ShardDataset(resolve(val)[0], transform=val_tf), **common)
    mapping = (index or {}).get("label_map")
    if mapping:
        classes = [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    else:
        counts = ((index or {}).get("stats") or {}).get("class_counts") or {}
        classes = [str(k) for k in sorted(int(k) for k in counts)] if counts else []
    if not classes:
        raise SourceError(str(train), "no label map or class counts in the index: cannot tell the classes")
    return train_loader, val_loader, classes


def write_report(result: TrainResult, class_names: list[str], out: str | os.PathLike) -> dict:
    """Writes ``history.json``, ``metrics.json``, ``training.png`` and ``confusion.png``.

    Returns:
        Name -> path of the files written (``metrics`` needs a validation report,
        ``confusion`` a classification one; a language model's report has no confusion).
    """
    from fastdata.pictures import plots as viz

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"history": out / "history.json", "training_png": out / "training.png"}
    paths["history"].write_text(
        json.dumps({"epochs": result.history, "steps": result.steps}, indent=1)
    )
    viz.plot_training(result.history, paths["training_png"], steps=result.steps)
    if result.report is not None:
        paths["metrics"] = out / "metrics.json"
        paths["metrics"].write_text(json.dumps(result.report.to_dict(class_names), indent=1))
    if isinstance(result.report, ClassificationReport):
        paths["confusion_png"] = out / "confusion.png"
        viz.plot_confusion(result.report.confusion, class_names, paths["confusion_png"])
    return {k: str(v) for k, v in paths.items()}
