"""Tests of the classification metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdata.train.metrics import classification_report, confusion_matrix, format_report

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.filterwarnings("ignore:A single label:UserWarning")
@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 7), n=st.integers(1, 80), seed=st.integers(0, 2**32 - 1))
def test_metrics_match_sklearn(k, n, seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    # Mostly-right predictions with some noise, so that scores are neither all 0 nor all 1.
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    labels = list(range(k))
    cm = confusion_matrix(y_true, y_pred, k)
    np.testing.assert_array_equal(
        cm, sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels)
    )
    report = classification_report(cm)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    np.testing.assert_allclose(report.precision, p, atol=1e-12)
    np.testing.assert_allclose(report.recall, r, atol=1e-12)
    np.testing.assert_allclose(report.f1, f, atol=1e-12)
    np.testing.assert_array_equal(report.support, s)
    assert report.accuracy == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    for ours, average in (
        (report.macro_precision, sklearn_metrics.precision_score),
        (report.macro_recall, sklearn_metrics.recall_score),
        (report.macro_f1, sklearn_metrics.f1_score),
    ):
        expected = average(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        assert ours == pytest.approx(expected, abs=1e-12)


def test_confusion_matrix_checks_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix([0, 1, 3], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="labels but"):
        confusion_matrix([0, 1], [0], 3)


def test_report_dict_and_text():
    report = classification_report(np.array([[3, 1], [0, 2]]), loss=0.5)
    d = report.to_dict(["cat", "dog"])
    assert d["per_class"]["cat"]["support"] == 4 and d["per_class"]["dog"]["recall"] == 1.0
    assert d["confusion"] == [[3, 1], [0, 2]] and d["loss"] == 0.5
    text = format_report(report, ["cat", "dog"])
    assert "macro avg" in text and "dog" in text and text.count("\n") == 4
