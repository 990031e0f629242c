"""Evaluation metrics with pinned definitions: segmentation (Dice, IoU, HD95), classification
(macro precision/recall/F1, accuracy, confusion) and regression (MSE, MAE, R²).

Pure numpy/scipy, so importing this package is cheap. Each function's docstring states its definition;
the ``*Meter`` classes stream the same quantities over batches.
"""

from mtlbench.metrics.classification import (
    ClassificationMeter,
    classification_scores,
    confusion_matrix,
    scores_from_confusion,
)
from mtlbench.metrics.regression import RegressionMeter, regression_scores
from mtlbench.metrics.segmentation import (
    SegmentationMeter,
    dice,
    hd95,
    image_diagonal,
    iou,
    segmentation_scores,
    surface_mask,
)

__all__ = [
    "ClassificationMeter",
    "RegressionMeter",
    "SegmentationMeter",
    "classification_scores",
    "confusion_matrix",
    "dice",
    "hd95",
    "image_diagonal",
    "iou",
    "regression_scores",
    "scores_from_confusion",
    "segmentation_scores",
    "surface_mask",
]
