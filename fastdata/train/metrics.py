"""Classification metrics computed from a confusion matrix, and ``evaluate``.

The conventions are scikit-learn's: rows of the confusion matrix are true classes, columns
predicted classes; a precision or recall whose denominator is zero counts as 0; macro averages
are plain means over all classes (also those absent from the data), and the macro F1 is the
mean of the per-class F1 scores, not the F1 of the macro precision and recall.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastdata.errors import FastdataError
from fastdata.train.feed import Feed, call, classification_pair


def confusion_matrix(
    y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts (true, predicted) pairs into a ``(num_classes, num_classes)`` int64 matrix.

    Raises:
        ValueError: a label is outside ``[0, num_classes)`` or the shapes differ.
    """
    t = torch.as_tensor(y_true).reshape(-1).long()
    p = torch.as_tensor(y_pred).reshape(-1).long().to(t.device)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.numel()} labels but y_pred has {p.numel()}")
    if t.numel() and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); pass the right num_classes"
            f" (got labels from {int(min(t.min(), p.min()))} to {int(max(t.max(), p.max()))})"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass
class ClassificationReport:
    """Accuracy, per-class and macro precision/recall/F1 of one evaluation.

    Attributes:
        confusion: ``(C, C)`` counts, rows true classes, columns predictions.
        accuracy: share of correct predictions.
        precision, recall, f1: per-class scores, shape ``(C,)``.
        support: number of true samples per class.
        macro_precision, macro_recall, macro_f1: unweighted means over classes.
        loss: mean loss over the evaluated samples, if known.
    """

    confusion: np.ndarray
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    macro_precision: float
    macro_recall: float
    macro_f1: float
    loss: float | None = None

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """Returns a JSON-serialisable dict (per-class scores keyed by class name)."""
        names = list(class_names) if class_names else [str(i) for i in range(len(self.f1))]
        per_class = {
            name: {
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, name in enumerate(names)
        }
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
        }


def classification_report(confusion: np.ndarray, loss: float | None = None) -> ClassificationReport:
    """Computes the scores of a confusion matrix (see the module docstring for conventions)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = cm.sum()
    return ClassificationReport(
        confusion=np.asarray(confusion, dtype=np.int64),
        accuracy=float(tp.sum() / total) if total else 0.0,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support.astype(np.int64),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        loss=loss,
    )


def format_report(report: ClassificationReport, class_names: Sequence[str] | None = None) -> str:
    """Formats a report as a plain-text table, one line per class plus the averages."""
    names = list(class_names) if class_names else [str(i) for i in range(len(report.f1))]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}} {report.precision[i]:9.3f} {report.recall[i]:9.3f}"
            f" {report.f1[i]:9.3f} {int(report.support[i]):9d}"
        )
    total = int(report.support.sum())
    lines.append(
        f"{'macro avg':<{width}} {report.macro_precision:9.3f} {report.macro_recall:9.3f}"
        f" {report.macro_f1:9.3f} {total:9d}"
    )
    lines.append(f"{'accuracy':<{width}} {'':>9} {'':>9} {report.accuracy:9.3f} {total:9d}")
    return "\n".join(lines)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, feed: Feed | None = None) -> ClassificationReport:
    """Evaluates a classifier on a loader: loss, accuracy, P/R/F1, confusion matrix.

    Args:
        model: a classifier returning logits ``(N, classes)``; put in eval mode.
        loader: iterable of ``(images, labels)`` batches, or of token batches with
            ``labels`` (``TokenDataset(mode="padded")``).
        feed: how batches reach the model (default ``Feed()``: CUDA if available).

    Raises:
        FastdataError: the loader yields no batch.
    """
    feed = feed or Feed()
    model.eval()
    confusion, loss_sum, count = None, torch.zeros((), device=feed.device), 0
    batches = iter(loader)
    batch, _ = feed.next(batches)
    while batch is not None:
        inputs, labels = classification_pair(batch)
        with feed.autocast():
            logits = call(model, inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        count += labels.numel()
        c = logits.shape[1]
        pairs = torch.bincount(labels * c + logits.argmax(1), minlength=c * c)
        confusion = pairs if confusion is None else confusion + pairs
        batch, _ = feed.next(batches)
    if confusion is None:
        raise FastdataError("the validation loader yielded no batch; check its dataset")
    c = logits.shape[1]
    return classification_report(
        confusion.reshape(c, c).cpu().numpy(), loss=float(loss_sum) / count
    )
