"""Multi-class classification metrics (TI-RADS grading), computed from the confusion matrix.

Definitions, pinned to scikit-learn's so that the numbers can be checked against it (the tests do; the
library itself does not import scikit-learn):

- Labels are integers ``0 .. num_classes - 1``; ``confusion[i][j]`` counts samples of true class ``i``
  predicted as ``j`` (rows = true, columns = predicted).
- Per class ``c``: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN), each
  0 when its denominator is 0 (``zero_division=0``); support = number of true samples of ``c``.
- ``"precision"``, ``"recall"``, ``"f1"`` are macro averages, the unweighted mean over the classes that
  occur in ``y_true`` or ``y_pred`` (scikit-learn's ``average="macro"`` with its default labels). A class
  absent from both is still listed in ``"per_class"`` (all zeros) but does not pull the macro mean down.
- ``"accuracy"`` = trace / total. With no sample at all, the four averages are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ClassificationMeter", "classification_scores", "confusion_matrix", "scores_from_confusion"]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(
            f"Parameter `num_classes` should be a positive integer. Found `num_classes = {num_classes!r}`."
        )
    return int(num_classes)


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class{i}" for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes or len(set(names)) != num_classes:
        raise ValueError(
            f"Parameter `class_names` should hold {num_classes} distinct names. "
            f"Found `class_names = {names}`."
        )
    return names


def _labels(y: Any, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` should be a 1-D array of class indices. Found shape {arr.shape}.")
    if arr.size == 0:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"`{name}` should hold integer class indices. Found non-integer values.")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`{name}` should hold integer class indices. Found dtype `{arr.dtype}`.")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= num_classes:
        raise ValueError(
            f"`{name}` should hold class indices in [0, {num_classes - 1}]. "
            f"Found values in [{arr.min()}, {arr.max()}]."
        )
    return arr


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; rows = true class, columns = predicted class."""
    k = _check_num_classes(num_classes)
    t, p = _labels(y_true, "y_true", k), _labels(y_pred, "y_pred", k)
    if t.shape != p.shape:
        raise ValueError(f"`y_true` and `y_pred` should have the same length. Found {t.size} and {p.size}.")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_confusion(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The :func:`classification_scores` dictionary of an existing confusion matrix (rows = true)."""
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"`confusion` should be a square (K, K) matrix. Found shape {cm.shape}.")
    cm = cm.astype(np.int64)
    names = _class_names(class_names, cm.shape[0])
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    precision = _safe_ratio(tp, tp + fp)
    recall = _safe_ratio(tp, tp + fn)
    f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
    present = (support + predicted) > 0
    total = int(cm.sum())
    if total == 0:
        macro_p = macro_r = macro_f = accuracy = math.nan
    else:
        macro_p = float(precision[present].mean())
        macro_r = float(recall[present].mean())
        macro_f = float(f1[present].mean())
        accuracy = int(tp.sum()) / total
    return {
        "precision": macro_p,
        "recall": macro_r,
        "f1": macro_f,
        "accuracy": accuracy,
        "n_samples": total,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion": cm.tolist(),
    }


def classification_scores(
    y_true: Any, y_pred: Any, num_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Macro precision/recall/F1, accuracy, per-class scores and the confusion matrix.

    Returns ``{"precision", "recall", "f1", "accuracy", "n_samples", "per_class", "confusion"}``.
    ``per_class`` maps each of the ``num_classes`` names (``class_names``, default ``"class0"``, ...)
    to ``{"precision", "recall", "f1", "support"}``; ``confusion`` is a list of lists, rows = true.
    Macro averages run over the classes present in ``y_true`` ∪ ``y_pred`` with ``zero_division=0``
    (scikit-learn's ``average="macro"``).
    """
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes), class_names)


class ClassificationMeter:
    """Streaming :func:`classification_scores`: accumulates the confusion matrix over ``update`` calls.

    ``compute()`` equals :func:`classification_scores` on the concatenation of everything seen since
    the last ``reset``.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.class_names = _class_names(class_names, self.num_classes)
        self.reset()

    def reset(self) -> None:
        """Zero the accumulated confusion matrix."""
        self._confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Add one batch of integer labels (1-D, or a scalar for a single sample)."""
        self._confusion += confusion_matrix(y_true, y_pred, self.num_classes)

    def compute(self) -> dict[str, Any]:
        """The :func:`classification_scores` dictionary of everything seen so far."""
        return scores_from_confusion(self._confusion, self.class_names)

    def __repr__(self) -> str:
        return (
            f"ClassificationMeter(num_classes={self.num_classes}, class_names={self.class_names!r}, "
            f"n_samples={int(self._confusion.sum())})"
        )
