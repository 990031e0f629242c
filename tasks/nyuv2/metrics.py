"""Losses and metrics of the dense scene benchmarks, as MTAN and LibMTL define them.

Sources: ``lorenmt/mtan`` ``im2im_pred/utils.py`` (``model_fit``, ``ConfMatrix``, ``depth_error``,
``normal_error``) and LibMTL ``examples/nyu/utils.py`` (``SegMetric``, ``DepthMetric``,
``NormalMetric`` and the three losses; Cityscapes reuses them). Conventions pinned here:

Valid pixels
    Segmentation: a pixel counts when its label lies in [0, classes) (label −1 is the ignore label).
    Depth: when the target is not 0. Normals: when the **sum** of the target's three components is
    not 0 (the papers' test, ``torch.sum(gt, dim=1) != 0``: an all-zero normal is invalid).
Segmentation
    One confusion matrix over every valid pixel of the split. Pixel accuracy = trace / total;
    IoU_c = C_cc / (row_c + col_c − C_cc); mIoU = the mean IoU over classes. A class absent from
    both the targets and the predictions of the whole split has no IoU and is left out of the mean
    (LibMTL's mean would be NaN then; on the real validation sets every class occurs, so the two agree).
Depth
    abs_err = mean |pred − gt| and rel_err = mean |pred − gt| / gt over every valid pixel of the split
    (LibMTL averages per-batch means weighted by each batch's valid-pixel count: the same number).
Normals
    The prediction is L2-normalised; the angular error is arccos(clip(pred · gt, −1, 1)) in degrees
    at every valid pixel of the split; reported: mean, median and the shares of pixels with an error
    strictly below 11.25°, 22.5° and 30° (fractions in [0, 1], as LibMTL returns them; the papers
    print them ×100).
Losses
    Cross-entropy with ignore label −1 (mean over valid pixels of the batch); depth: L1 summed over
    valid pixels / their number; normals: 1 − (Σ pred · gt over valid pixels) / their number.
    Predictions are made at the input resolution. A batch without a valid pixel gives a zero loss
    (the papers divide by zero there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "METRICS",
    "NORMAL_THRESHOLDS",
    "DenseEvaluator",
    "angular_errors",
    "delta_m",
    "depth_loss",
    "depth_valid",
    "normal_loss",
    "normal_valid",
    "segmentation_loss",
]

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
#: Task → ((metric key, higher is better), ...), in the papers' column order.
METRICS: dict[str, tuple[tuple[str, bool], ...]] = {
    "seg": (("miou", True), ("pixel_acc", True)),
    "depth": (("abs_err", False), ("rel_err", False)),
    "normal": (
        ("angle_mean", False),
        ("angle_median", False),
        ("within_11_25", True),
        ("within_22_5", True),
        ("within_30", True),
    ),
}


def depth_valid(target: Tensor) -> Tensor:
    """(B, 1, H, W) bool: depth measured there (the papers' ``sum over channels != 0``)."""
    return target.sum(dim=1, keepdim=True) != 0


def normal_valid(target: Tensor) -> Tensor:
    """(B, 1, H, W) bool: a normal given there (the papers' ``sum over channels != 0``)."""
    return target.sum(dim=1, keepdim=True) != 0


def segmentation_loss(logits: Tensor, label: Tensor) -> Tensor:
    if not bool((label >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), label, ignore_index=-1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    valid = depth_valid(target)
    count = valid.sum()
    if count == 0:
        return pred.sum() * 0.0
    return ((pred.float() - target).abs() * valid).sum() / count


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    valid = normal_valid(target)
    count = valid.sum()
    if count == 0:
        return pred.sum() * 0.0
    unit = F.normalize(pred.float(), dim=1)
    return 1.0 - ((unit * target) * valid).sum() / count


def angular_errors(pred: Tensor, target: Tensor) -> Tensor:
    """Angular error in degrees at every valid pixel (1-D), the prediction normalised first."""
    unit = F.normalize(pred.float(), dim=1)
    cosine = (unit * target).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))[normal_valid(target)[:, 0]]


class DenseEvaluator:
    """Accumulates one evaluation pass; ``compute()`` returns the metrics of the active tasks.

    Also ``loss`` (the default checkpoint monitor): the mean over the active tasks of each task's
    loss over every valid pixel of the split. With single-task ``baselines`` for the split being
    evaluated, ``delta_m`` (Δm%, lower is better) is added (see :func:`delta_m`).
    """

    def __init__(
        self,
        tasks: tuple[str, ...],
        num_classes: int,
        baselines: Mapping[int, Mapping[str, float]] | None = None,
    ) -> None:
        self.tasks = tasks
        self.num_classes = num_classes
        self.baselines = baselines or {}
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.ce_sum = 0.0
        self.depth_abs = self.depth_rel = 0.0
        self.depth_count = 0
        self.angles: list[np.ndarray] = []
        self.split_ids: set[int] = set()

    def update(self, output: Any, batch: dict[str, Tensor]) -> None:
        outputs = output.outputs
        if "split_id" in batch:
            self.split_ids.update(int(s) for s in batch["split_id"].reshape(-1).tolist())
        if "seg" in self.tasks:
            self._update_seg(outputs["seg"].detach().float(), batch["seg"])
        if "depth" in self.tasks:
            pred, target = outputs["depth"].detach().float(), batch["depth"].float()
            valid = depth_valid(target)
            p, t = pred[valid], target[valid]
            self.depth_abs += float((p - t).abs().double().sum())
            self.depth_rel += float(((p - t).abs() / t).double().sum())
            self.depth_count += int(valid.sum())
        if "normal" in self.tasks:
            errors = angular_errors(outputs["normal"].detach(), batch["normal"].float())
            # float32 as the papers keep them: 72 M valid pixels on NYUv2's val split are ~290 MB
            self.angles.append(errors.cpu().numpy().astype(np.float32))

    def _update_seg(self, logits: Tensor, label: Tensor) -> None:
        n = self.num_classes
        pred = logits.argmax(1).flatten().cpu()
        target = label.flatten().cpu().long()
        keep = (target >= 0) & (target < n)
        self.confusion += torch.bincount(n * target[keep] + pred[keep], minlength=n * n).reshape(n, n)
        if keep.any():
            safe = label.long().masked_fill((label < 0) | (label >= n), -1)
            ce = F.cross_entropy(logits, safe, ignore_index=-1, reduction="sum")
            self.ce_sum += float(ce)

    def compute(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        losses = []
        if "seg" in self.tasks:
            metrics.update(confusion_scores(self.confusion.numpy()))
            total = int(self.confusion.sum())
            metrics["loss_seg"] = self.ce_sum / total if total else math.nan
            losses.append(metrics["loss_seg"])
        if "depth" in self.tasks:
            n = self.depth_count
            metrics["abs_err"] = self.depth_abs / n if n else math.nan
            metrics["rel_err"] = self.depth_rel / n if n else math.nan
            losses.append(metrics["abs_err"])
        if "normal" in self.tasks:
            metrics.update(normal_scores(np.concatenate(self.angles) if self.angles else np.zeros(0)))
            losses.append(metrics.pop("loss_normal"))
        metrics["loss"] = float(np.mean(losses))
        if len(self.split_ids) == 1:
            baseline = self.baselines.get(next(iter(self.split_ids)))
            if baseline is not None:
                metrics["delta_m"] = delta_m(metrics, baseline, self.tasks)
        return metrics


def confusion_scores(confusion: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU from a (target, prediction) confusion matrix."""
    h = confusion.astype(np.float64)
    total = h.sum()
    tp = np.diag(h)
    union = h.sum(0) + h.sum(1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    present = union > 0
    return {
        "miou": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_acc": float(tp.sum() / total) if total else math.nan,
        "iou_per_class": [None if math.isnan(v) else float(v) for v in iou],
    }


def normal_scores(errors: np.ndarray) -> dict[str, float]:
    """Mean, median and threshold shares of angular errors (degrees), plus the mean 1 − cos."""
    if errors.size == 0:
        return {k: math.nan for k, _ in METRICS["normal"]} | {"loss_normal": math.nan}
    scores = {
        "angle_mean": float(errors.mean(dtype=np.float64)),
        "angle_median": float(np.median(errors)),
    }
    for (key, _), threshold in zip(METRICS["normal"][2:], NORMAL_THRESHOLDS, strict=True):
        scores[key] = float((errors < threshold).mean(dtype=np.float64))
    scores["loss_normal"] = float((1.0 - np.cos(np.deg2rad(errors.astype(np.float64)))).mean())
    return scores


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float], tasks: tuple[str, ...]) -> float:
    """Δm% (Maninis et al. 2019) of a multitask result against the single-task baselines.

    Δm% = 100 / K · Σ_k (−1)^{h_k} (M_k − B_k) / B_k over the K metrics of ``tasks`` (all the
    papers' columns: 9 on NYUv2, 4 on Cityscapes), with h_k = 1 when higher is better. Lower is
    better; a multitask model equal to its single-task baselines has Δm% = 0. NaN when a baseline
    metric is 0 (no relative change exists).
    """
    terms = []
    for task in tasks:
        for key, higher_is_better in METRICS[task]:
            sign = -1.0 if higher_is_better else 1.0
            base = float(baseline[key])
            if base == 0.0:
                return math.nan
            terms.append(sign * (float(metrics[key]) - base) / base)
    return 100.0 * float(np.mean(terms))
