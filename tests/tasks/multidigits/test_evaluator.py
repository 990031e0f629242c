"""Metrics against independent computations: scikit-learn's confusion matrix and a direct formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score

from mtlbench.model import ModelOutput
from mtlbench.tasks.multidigits.evaluator import MultiDigitsEvaluator, iou_from_confusion


def _one_hot_logits(labels: np.ndarray, num_classes: int, axis: int = 1) -> torch.Tensor:
    """Logits whose argmax over ``axis`` is ``labels``."""
    return torch.from_numpy(np.moveaxis(np.eye(num_classes, dtype=np.float32)[labels], -1, axis))


def _direct_miou(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, list]:
    ious = []
    for c in range(num_classes):
        inter = np.sum((truth == c) & (pred == c))
        union = np.sum((truth == c) | (pred == c))
        ious.append(inter / union if union else None)
    present = [v for v in ious if v is not None]
    return float(np.mean(present)), ious


def test_scores_match_scikit_learn_and_the_direct_formula() -> None:
    rng = np.random.default_rng(0)
    n, size = 37, 8
    truth = {k: rng.integers(0, 10, n) for k in ("left", "right")}
    pred = {k: np.where(rng.random(n) < 0.6, truth[k], rng.integers(0, 10, n)) for k in truth}
    # the map never has class 2 ("right") in truth nor in prediction: absent from the whole split
    map_true = rng.integers(0, 2, (n, size, size))
    map_pred = np.where(rng.random((n, size, size)) < 0.7, map_true, 1 - map_true)
    evaluator = MultiDigitsEvaluator(("left", "right", "map"))
    for batch in np.array_split(np.arange(n), 4):  # several batches: one matrix over the whole split
        output = ModelOutput(
            features=[],
            outputs={
                "left": _one_hot_logits(pred["left"][batch], 10),
                "right": _one_hot_logits(pred["right"][batch], 10),
                "map": _one_hot_logits(map_pred[batch], 3),
            },
        )
        evaluator.update(
            output,
            {
                "left": torch.from_numpy(truth["left"][batch]),
                "right": torch.from_numpy(truth["right"][batch]),
                "map": torch.from_numpy(map_true[batch]),
            },
        )
    m = evaluator.compute()
    for k in ("left", "right"):
        assert m[f"{k}_accuracy"] == pytest.approx(accuracy_score(truth[k], pred[k]))
        assert m[f"{k}_f1"] == pytest.approx(f1_score(truth[k], pred[k], average="macro"))
        np.testing.assert_array_equal(
            m[f"{k}_confusion"], confusion_matrix(truth[k], pred[k], labels=range(10))
        )
    t, p = map_true.ravel(), map_pred.ravel()
    np.testing.assert_array_equal(m["map_confusion"], confusion_matrix(t, p, labels=[0, 1, 2]))
    assert m["map_pixel_accuracy"] == pytest.approx(accuracy_score(t, p))
    miou, ious = _direct_miou(t, p, 3)
    assert ious[2] is None and m["map_iou"]["right"] is None  # absent class: no IoU, not in the mean
    assert m["map_miou"] == pytest.approx(miou)
    assert m["map_miou"] == pytest.approx(jaccard_score(t, p, labels=[0, 1], average="macro"))
    assert [m["map_iou"][c] for c in ("background", "left")] == pytest.approx(ious[:2])
    assert m["score"] == pytest.approx((m["left_accuracy"] + m["right_accuracy"] + m["map_miou"]) / 3)


def test_iou_conventions_on_a_hand_made_matrix() -> None:
    # rows = truth, columns = prediction; class 1 only predicted (IoU 0), class 3 absent everywhere
    confusion = np.array([[5, 1, 0, 0], [0, 0, 0, 0], [2, 0, 4, 0], [0, 0, 0, 0]])
    miou, per_class = iou_from_confusion(confusion)
    assert per_class == pytest.approx([5 / 8, 0.0, 4 / 6, None])  # type: ignore[list-item]
    assert miou == pytest.approx((5 / 8 + 0 + 4 / 6) / 3)
    assert math.isnan(iou_from_confusion(np.zeros((3, 3)))[0])


def test_single_task_evaluators_score_only_their_task() -> None:
    evaluator = MultiDigitsEvaluator(("map",))
    labels = np.zeros((2, 4, 4), dtype=np.int64)
    evaluator.update(
        ModelOutput(features=[], outputs={"map": _one_hot_logits(labels, 3)}),
        {"map": torch.from_numpy(labels)},
    )
    m = evaluator.compute()
    assert m["map_miou"] == m["score"] == 1.0 and "left_accuracy" not in m
