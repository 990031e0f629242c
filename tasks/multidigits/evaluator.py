"""Metrics of one evaluation pass of the multidigits task: digit accuracies and the ownership map's IoU.

Definitions:

* ``left_accuracy`` / ``right_accuracy``: correct digits / composites; ``left_f1`` / ``right_f1``:
  macro F1 over the classes present in truth or prediction (:mod:`mtlbench.metrics.classification`).
* The ownership map (0 background, 1 left, 2 right) is scored from one 3×3 pixel confusion matrix
  accumulated over the whole split (not averaged per image): ``map_pixel_accuracy`` = trace / total;
  per class ``IoU_c = TP / (TP + FP + FN)``; ``map_miou`` = the mean of ``IoU_c`` over the classes
  that occur in the truth or the prediction of the split. A class absent from both has no IoU
  (``None`` in ``map_iou``) and is left out of the mean, rather than counted as 1 or 0.
* ``score`` (the default monitor): the mean of ``left_accuracy``, ``right_accuracy`` and ``map_miou``
  over the trained tasks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

from mtlbench.metrics import ClassificationMeter
from mtlbench.model import ModelOutput

DIGIT_NAMES = tuple(str(d) for d in range(10))
OWNER_NAMES = ("background", "left", "right")


def iou_from_confusion(confusion: np.ndarray) -> tuple[float, list[float | None]]:
    """Mean IoU over the classes present in truth or prediction, and each class's IoU (None if absent).

    ``confusion[i][j]`` counts pixels of true class ``i`` predicted as ``j``. NaN with no pixel at all.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp  # TP + FP + FN
    per_class: list[float | None] = [
        float(tp[c] / union[c]) if union[c] > 0 else None for c in range(len(cm))
    ]
    present = [v for v in per_class if v is not None]
    return (float(np.mean(present)) if present else math.nan), per_class


class MultiDigitsEvaluator:
    """Accumulates confusion matrices for the trained tasks over one split; see the module docstring."""

    def __init__(self, task_names: tuple[str, ...]) -> None:
        self.task_names = task_names
        self.digits = {
            name: ClassificationMeter(10, DIGIT_NAMES) for name in ("left", "right") if name in task_names
        }
        self.owner = ClassificationMeter(3, OWNER_NAMES) if "map" in task_names else None

    def update(self, output: ModelOutput, batch: dict[str, Tensor]) -> None:
        for name, meter in self.digits.items():
            pred = output.outputs[name].detach().argmax(1).cpu().numpy()
            meter.update(batch[name].cpu().numpy(), pred)
        if self.owner is not None:
            pred = output.outputs["map"].detach().argmax(1).cpu().numpy().ravel()
            self.owner.update(batch["map"].cpu().numpy().ravel(), pred)

    def compute(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        parts = []
        for name, meter in self.digits.items():
            scores = meter.compute()
            metrics[f"{name}_accuracy"] = scores["accuracy"]
            metrics[f"{name}_f1"] = scores["f1"]
            metrics[f"{name}_confusion"] = scores["confusion"]
            parts.append(scores["accuracy"])
            metrics["n_samples"] = scores["n_samples"]
        if self.owner is not None:
            scores = self.owner.compute()
            miou, per_class = iou_from_confusion(np.asarray(scores["confusion"]))
            metrics["map_miou"] = miou
            metrics["map_pixel_accuracy"] = scores["accuracy"]
            metrics["map_iou"] = dict(zip(OWNER_NAMES, per_class))
            metrics["map_confusion"] = scores["confusion"]
            parts.append(miou)
        metrics["score"] = float(np.mean(parts)) if parts else math.nan
        return metrics
