"""Macro precision/recall/F1, accuracy and confusion: a hand-computed case and agreement with
scikit-learn (the pinned reference) on seeded labels with missing and never-predicted classes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mtlbench.metrics import ClassificationMeter, classification_scores, confusion_matrix

sk_metrics = pytest.importorskip(
    "sklearn.metrics", reason="scikit-learn is the reference (pip install scikit-learn)"
)

TIRADS = ["TR1", "TR2", "TR3", "TR4", "TR5"]


def _labels(seed: int, n: int = 200, num_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labels where class 0 never occurs in ``y_true`` (only predicted) and the last class is
    never predicted (only true), like a rare TR1 and a model that never says TR5."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(1, num_classes, size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, num_classes - 1, size=n))
    y_pred[y_pred == num_classes - 1] = num_classes - 2
    return y_true, y_pred


def _assert_matches_sklearn(scores: dict, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> None:
    macro = sk_metrics.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert scores["precision"] == pytest.approx(macro[0], abs=1e-12)
    assert scores["recall"] == pytest.approx(macro[1], abs=1e-12)
    assert scores["f1"] == pytest.approx(macro[2], abs=1e-12)
    assert scores["accuracy"] == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert scores["n_samples"] == len(y_true)
    expected_cm = sk_metrics.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    assert scores["confusion"] == expected_cm.tolist()
    p, r, f, s = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), average=None, zero_division=0
    )
    per_class = list(scores["per_class"].values())
    assert len(per_class) == k
    for c in range(k):
        assert per_class[c]["precision"] == pytest.approx(p[c], abs=1e-12)
        assert per_class[c]["recall"] == pytest.approx(r[c], abs=1e-12)
        assert per_class[c]["f1"] == pytest.approx(f[c], abs=1e-12)
        assert per_class[c]["support"] == s[c]


def test_golden_values() -> None:
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    scores = classification_scores(y_true, y_pred, num_classes=3)
    assert scores["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert scores["per_class"]["class0"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["per_class"]["class1"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    # Class 2 is never predicted: precision 0 by zero_division=0, and it still counts in the macro mean.
    assert scores["per_class"]["class2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["precision"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(1.3 / 3)
    assert scores["accuracy"] == pytest.approx(0.6)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_missing_and_unpredicted_classes(seed: int) -> None:
    y_true, y_pred = _labels(seed)
    assert 0 not in y_true and 0 in y_pred
    assert 4 in y_true and 4 not in y_pred
    scores = classification_scores(y_true, y_pred, num_classes=5, class_names=TIRADS)
    assert list(scores["per_class"]) == TIRADS
    _assert_matches_sklearn(scores, y_true, y_pred, k=5)


def test_class_absent_everywhere_is_listed_but_not_averaged() -> None:
    rng = np.random.default_rng(9)
    y_true = rng.integers(0, 3, size=60)  # classes 3 and 4 never appear anywhere
    y_pred = np.where(rng.random(60) < 0.5, y_true, rng.integers(0, 3, size=60))
    scores = classification_scores(y_true, y_pred, num_classes=5, class_names=TIRADS)
    _assert_matches_sklearn(scores, y_true, y_pred, k=5)
    assert scores["per_class"]["TR5"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    present_mean = np.mean([scores["per_class"][n]["f1"] for n in TIRADS[:3]])
    assert scores["f1"] == pytest.approx(present_mean)


def test_perfect_and_all_wrong() -> None:
    y = np.array([0, 1, 2, 3, 4, 4])
    perfect = classification_scores(y, y, num_classes=5)
    assert (perfect["precision"], perfect["recall"], perfect["f1"], perfect["accuracy"]) == (
        1.0,
        1.0,
        1.0,
        1.0,
    )
    wrong = classification_scores(y, (y + 1) % 5, num_classes=5)
    assert (wrong["precision"], wrong["recall"], wrong["f1"], wrong["accuracy"]) == (0.0, 0.0, 0.0, 0.0)


def test_default_class_names_and_plain_python_types() -> None:
    scores = classification_scores(np.array([0, 1]), np.array([1, 1]), num_classes=3)
    assert list(scores["per_class"]) == ["class0", "class1", "class2"]
    assert all(type(v) is int for row in scores["confusion"] for v in row)
    assert type(scores["per_class"]["class1"]["support"]) is int
    assert type(scores["f1"]) is float


def test_float_integral_labels_are_accepted() -> None:
    y_true, y_pred = _labels(seed=1)
    as_int = classification_scores(y_true, y_pred, num_classes=5)
    assert classification_scores(y_true.astype(float), y_pred.astype(np.float32), num_classes=5) == as_int


def test_empty_input_gives_nan_averages() -> None:
    scores = classification_scores([], [], num_classes=3)
    assert scores["n_samples"] == 0
    assert all(math.isnan(scores[k]) for k in ("precision", "recall", "f1", "accuracy"))
    assert scores["confusion"] == [[0] * 3] * 3


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        classification_scores([0, 5], [0, 1], num_classes=5)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        classification_scores([0, 1], [-1, 1], num_classes=5)
    with pytest.raises(ValueError, match="same length"):
        classification_scores([0, 1, 2], [0, 1], num_classes=5)
    with pytest.raises(ValueError, match="integer class indices"):
        classification_scores([0.5, 1], [0, 1], num_classes=5)
    with pytest.raises(ValueError, match="1-D"):
        classification_scores(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int), num_classes=5)
    with pytest.raises(ValueError, match="`num_classes`"):
        classification_scores([0], [0], num_classes=0)
    with pytest.raises(ValueError, match="`class_names`"):
        classification_scores([0], [0], num_classes=5, class_names=TIRADS[:4])
    with pytest.raises(ValueError, match="`class_names`"):
        ClassificationMeter(2, class_names=["a", "a"])


def test_confusion_matrix_rows_are_true_labels() -> None:
    cm = confusion_matrix([2, 2, 0], [1, 1, 0], num_classes=3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 0], [0, 2, 0]]


@pytest.mark.parametrize("seed", range(3))
def test_meter_equals_one_shot_on_concatenated_data(seed: int) -> None:
    y_true, y_pred = _labels(seed, n=157)
    meter = ClassificationMeter(5, class_names=TIRADS)
    bounds = [0, 1, 40, 40, 101, 157]  # includes a single sample and an empty batch
    for lo, hi in itertools.pairwise(bounds):
        meter.update(y_true[lo:hi], y_pred[lo:hi])
    assert meter.compute() == classification_scores(y_true, y_pred, 5, class_names=TIRADS)

    meter.reset()
    assert meter.compute()["n_samples"] == 0
    meter.update(y_true[5], y_pred[5])  # a scalar pair is one sample
    assert meter.compute()["n_samples"] == 1
