"""Loss functions shared by tasks. Each is a batch mean of per-sample terms (samples never mix),
so gradients with respect to a shared representation stay per-sample."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlbench import distributed


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Mean over samples of ``1 − (2Σ p·g + s) / (Σ p + Σ g + s)`` with ``p = sigmoid(logits)``.

    Per-sample (not batch) Dice, so an empty target pushes that sample's prediction to zero.
    Computed in float32 whatever the autocast dtype.
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    denom = p.sum(1) + g.sum(1)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``w_c = N / (C · n_c)`` from training-split label counts; a class absent there gets weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def masked_mse(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error that ignores missing (NaN) target values.

    Per sample the mean (``reduction="mean"``) or the sum (``"sum"``: the squared L2 norm
    ‖pred − target‖², missing features contributing nothing) over its present features, then the mean
    over samples with at least one present feature; zero (still attached to the graph) when nothing is
    present. A sample with no target therefore contributes no gradient at all.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"Parameter `reduction` should be 'mean' or 'sum'. Found `reduction = {reduction!r}`."
        )
    pred = pred.float()
    present = ~torch.isnan(target)
    diff = torch.where(present, pred - torch.nan_to_num(target.float()), torch.zeros_like(pred))
    n_per_row = present.sum(dim=1)
    per_row = (diff**2).sum(dim=1)
    if reduction == "mean":
        per_row = per_row / n_per_row.clamp_min(1)
    rows = (n_per_row > 0).float()
    return (per_row * rows).sum() / distributed.batch_normaliser(rows.sum()).clamp_min(1.0)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Class-weighted cross-entropy over the samples with a label (label −1 = unknown).

    PyTorch's weighted mean ``Σ w_y·ℓ / Σ w_y``; zero (still attached to the graph) when no sample
    in the batch has a label, where PyTorch would return NaN. Under ``torchrun`` the denominator is
    the global batch's (``distributed.batch_normaliser``), so shards with different labels or
    weights still average to the global batch's loss and gradient.
    """
    known = labels >= 0
    total = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=-1, reduction="sum")
    if weight is None:
        denominator = known.sum().float()
    else:
        denominator = weight.to(logits.device).float()[labels[known]].sum()
    denominator = distributed.batch_normaliser(denominator)
    if not bool(denominator > 0):
        return logits.float().sum() * 0.0
    return total / denominator
