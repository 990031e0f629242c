"""Metrics of one evaluation pass of the thyroid task, for whichever of its tasks are active."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from mtlbench.metrics import ClassificationMeter, RegressionMeter, SegmentationMeter
from mtlbench.model import ModelOutput

from .radiomics import FEATURE_NAMES

CLASS_NAMES = ("TR1", "TR2", "TR3", "TR4", "TR5")


class ThyroidEvaluator:
    """Dice/IoU/HD95; macro precision/recall/F1 with per-class scores and confusion; clinical error.

    Samples without a TI-RADS label (label −1) are left out of the classification metrics.
    ``score`` is the mean of Dice and macro-F1 over the active tasks (the default checkpoint monitor).
    """

    def __init__(self, task_names: tuple[str, ...]) -> None:
        self.task_names = task_names
        self.seg = SegmentationMeter()
        self.cls = ClassificationMeter(num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES)
        self.clin = RegressionMeter(feature_names=FEATURE_NAMES)
        self.n_clinical = 0

    def update(self, output: ModelOutput, batch: dict[str, Tensor]) -> None:
        if "seg" in self.task_names:
            pred_mask = (output.outputs["seg"].detach().float() > 0).squeeze(1).cpu().numpy()
            # Resized real images carry their original pixels per pixel: HD95 in the original geometry.
            spacings = None
            if "pixel_spacing" in batch:
                spacings = [(float(s), float(s)) for s in batch["pixel_spacing"].cpu().tolist()]
            self.seg.update(pred_mask, batch["mask"].squeeze(1).cpu().numpy() > 0.5, spacings)
        if "cls" in self.task_names:
            cls = output.outputs["cls"]
            labels = batch["label"].cpu().numpy()
            known = labels >= 0
            if known.any():
                pred = cls["logits"].detach().float().argmax(1).cpu().numpy()
                self.cls.update(labels[known], pred[known])
            if "clin" in self.task_names and "clinical" in batch:
                target = batch["clinical"].cpu().numpy()
                present = ~np.isnan(target).all(axis=1)
                if present.any():
                    self.clin.update(cls["h_tirads"].detach().float().cpu().numpy()[present], target[present])
                    self.n_clinical += int(present.sum())

    def compute(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        parts = []
        if "seg" in self.task_names:
            metrics.update(self.seg.compute())
            parts.append(metrics["dice"])
        if "cls" in self.task_names:
            metrics.update(self.cls.compute())
            parts.append(metrics["f1"])
        if "clin" in self.task_names and self.n_clinical:  # splits with radiomics targets only
            clin = self.clin.compute()
            metrics["clinical_mse"] = clin["mse"]
            metrics["clinical_mae"] = clin["mae"]
            metrics["clinical_per_feature"] = clin["per_feature"]
        metrics["score"] = float(np.mean(parts))
        return metrics
