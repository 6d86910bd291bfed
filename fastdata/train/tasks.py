"""What ``fit`` trains a model to do: a task computes the loss of a batch and evaluates.

``fit`` owns the loop (autocast, step, log, checkpoints, throughput); a task owns what
differs between training an image classifier and a language model:

- ``Classification``: cross-entropy on class labels, for ``(images, labels)`` batches or
  token batches with ``labels`` (a fine-tuned ``GPTClassifier``); evaluates to a
  ``ClassificationReport`` (accuracy, precision, recall, F1, confusion matrix).
- ``LanguageModeling``: next-token cross-entropy over the ``targets`` of a token batch
  (-100 = no target), counted per target token; evaluates to an ``LMReport`` (loss,
  perplexity, next-token accuracy).

A task's ``step`` returns a ``Step``: the mean loss to back-propagate, the number of terms
it averages (samples or target tokens: the loop weighs losses and throughput by it), the
correct predictions among them and the rows of the batch. Its values stay on the device:
the loop reads them only when it logs (NOTE [ Prefetch and the data-wait share ] in
``fastdata/train/loop.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fastdata.errors import FastdataError
from fastdata.train.feed import Feed, call, classification_pair, model_inputs
from fastdata.train.metrics import ClassificationReport, evaluate

IGNORE = -100  # a target that counts for nothing (padding, the end of a row)


class Step(NamedTuple):
    """What a task's ``step`` returns (tensors stay on the device).

    Attributes:
        loss: the mean loss to back-propagate.
        units: the number of terms ``loss`` averages (samples or target tokens).
        correct: correct predictions among those terms.
        samples: rows in the batch.
    """

    loss: torch.Tensor
    units: torch.Tensor | int
    correct: torch.Tensor
    samples: int


class Task(Protocol):
    """The interface ``fit`` calls (see the module docstring)."""

    unit: str  # what ``Step.units`` counts: "samples" or "tokens"

    def step(self, model: nn.Module, batch: tuple | dict) -> Step: ...

    def evaluate(self, model: nn.Module, loader: Iterable, feed: Feed) -> object: ...

    def train_record(self, loss: float, units: float, seconds: float) -> dict: ...

    def val_record(self, report: object) -> dict: ...


class Classification:
    """Cross-entropy classification (the image trainer's task, and GPT fine-tuning).

    Args:
        label_smoothing: cross-entropy label smoothing.
    """

    unit = "samples"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def step(self, model: nn.Module, batch: tuple | dict) -> Step:
        """Loss and correct predictions of one batch (call under autocast)."""
        inputs, labels = classification_pair(batch)
        logits = call(model, inputs)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return Step(loss, labels.numel(), (logits.argmax(1) == labels).sum(), labels.numel())

    def evaluate(self, model: nn.Module, loader: Iterable, feed: Feed) -> ClassificationReport:
        """``fastdata.train.metrics.evaluate``."""
        return evaluate(model, loader, feed)

    def train_record(self, loss: float, units: float, seconds: float) -> dict:
        """Nothing beyond the loop's own record."""
        return {}

    def val_record(self, report: ClassificationReport) -> dict:
        """The validation entries of an epoch's record."""
        return {
            "val_loss": report.loss,
            "val_accuracy": report.accuracy,
            "val_macro_precision": report.macro_precision,
            "val_macro_recall": report.macro_recall,
            "val_macro_f1": report.macro_f1,
        }


@dataclass
class LMReport:
    """One evaluation of a language model.

    Attributes:
        loss: mean next-token cross-entropy per target token (nats).
        perplexity: ``exp(loss)``.
        accuracy: share of target tokens predicted exactly (argmax).
        tokens: target tokens evaluated.
    """

    loss: float
    perplexity: float
    accuracy: float
    tokens: int

    def to_dict(self, class_names: object = None) -> dict:
        """A JSON-serialisable dict (``class_names`` is accepted and unused)."""
        return asdict(self)


def perplexity(loss: float) -> float:
    """``exp(loss)``, infinite rather than an overflow error for a diverged loss."""
    return math.exp(loss) if loss < 700 else math.inf


class LanguageModeling:
    """Next-token prediction on token batches with ``targets`` (-100 = no target)."""

    unit = "tokens"

    def step(self, model: nn.Module, batch: tuple | dict) -> Step:
        """Mean cross-entropy over the batch's target tokens (call under autocast)."""
        if not isinstance(batch, dict) or "targets" not in batch:
            raise FastdataError(
                "language modelling needs token batches with 'targets' (fastdata.TokenDataset)"
            )
        logits = call(model, model_inputs(batch))
        targets = batch["targets"].long()
        valid = targets != IGNORE
        # A sum over the targets divided by their count: a batch without any target gives a
        # loss of 0, not the NaN of a mean over nothing.
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=IGNORE, reduction="sum") / valid.sum().clamp(min=1)  # fmt: skip
        correct = ((logits.argmax(-1) == targets) & valid).sum()
        return Step(loss, valid.sum(), correct, targets.shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, feed: Feed) -> LMReport:
        """Loss, perplexity and next-token accuracy over every target token of ``loader``.

        Raises:
            FastdataError: the loader yields no target token.
        """
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=feed.device)
        tokens = torch.zeros((), dtype=torch.int64, device=feed.device)
        correct = torch.zeros((), dtype=torch.int64, device=feed.device)
        batches = iter(loader)
        batch, _ = feed.next(batches)
        while batch is not None:
            with feed.autocast():
                out = self.step(model, batch)
            loss_sum += out.loss.double() * out.units
            tokens += out.units
            correct += out.correct
            batch, _ = feed.next(batches)
        n = int(tokens)
        if not n:
            raise FastdataError("the validation loader yielded no target token; check its dataset")
        loss = float(loss_sum) / n
        return LMReport(loss, perplexity(loss), int(correct) / n, n)

    def train_record(self, loss: float, units: float, seconds: float) -> dict:
        """Tokens, tokens/s and the training perplexity of an epoch."""
        return {
            "tokens": int(units),
            "tokens_per_sec": units / seconds if seconds else 0.0,
            "train_perplexity": perplexity(loss),
        }

    def val_record(self, report: LMReport) -> dict:
        """The validation entries of an epoch's record."""
        return {
            "val_loss": report.loss,
            "val_perplexity": report.perplexity,
            "val_accuracy": report.accuracy,
        }
