"""Classification metrics with numpy alone, so both images compute them the same way."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are the truth, columns the prediction."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return confusion


def classification_scores(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], probabilities: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class scores and (given probabilities) cross-entropy."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n_classes = len(class_names)
    confusion = confusion_matrix(y_true, y_pred, n_classes)

    true_positives = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    # A class never predicted has precision 0 (scikit-learn's zero_division=0), not NaN.
    precision = np.divide(true_positives, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros(n_classes), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n_classes), where=denominator > 0)

    loss = None
    if probabilities is not None:
        picked = np.clip(np.asarray(probabilities)[np.arange(len(y_true)), y_true], 1e-12, 1.0)
        loss = float(-np.mean(np.log(picked)))
        if not math.isfinite(loss):
            loss = None

    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "loss": loss,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(class_names)
        },
        "n_evaluated": int(len(y_true)),
    }
