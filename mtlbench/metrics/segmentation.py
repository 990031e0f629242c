"""Binary segmentation metrics for one nodule mask per image: Dice, IoU and HD95.

The definitions are pinned here once, so that every number the suite reports means the same thing.

Overlap
    ``TP``, ``FP``, ``FN`` are pixel counts. Dice = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN).

Surface
    The surface (boundary) of a mask is ``mask XOR binary_erosion(mask)``, the erosion using scipy's
    default structuring element (the 4-neighbour cross) and treating everything outside the image as
    background. A foreground pixel is thus on the surface when one of its 4 direct neighbours is
    background or lies outside the image; the surface is an 8-connected contour one pixel thick. This is
    what MONAI's ``get_mask_edges`` computes (it calls ``scipy.ndimage.binary_erosion`` without a
    structure), so the numbers agree with ``monai.metrics.compute_hausdorff_distance``.

HD95
    ``d(A→B)`` is the set of Euclidean distances from every surface pixel of A to the nearest surface
    pixel of B, between pixel centres, with ``spacing`` (row, column) as the size of a pixel (pixels
    when ``None``). HD95 = max(P95(d(pred→target)), P95(d(target→pred))), where P95 is the 95th
    percentile with linear interpolation (``numpy.percentile``'s default). This is MONAI's
    ``compute_hausdorff_distance(percentile=95)`` convention, and differs from medpy's ``hd95``, which
    takes one percentile of the two directed sets pooled.

Empty masks
    Both empty: Dice 1, IoU 1, HD95 0 (a correct "no nodule"). Exactly one empty: Dice 0, IoU 0 and
    HD95 = the image diagonal ``sqrt((H * sy)^2 + (W * sx)^2)``, an upper bound on any distance between
    two pixel centres of the image, so a missed or hallucinated nodule is never better than a bad contour.
    MONAI returns inf or NaN in these cases; averaging those is impossible, hence the policy.
    Because a few empty predictions can dominate a mean HD95 (the diagonal of a 512 px letterbox is
    724 px), :class:`SegmentationMeter` also reports ``empty_predictions`` (images with a non-empty
    target and an empty prediction) and ``hd95_nonempty``, the mean HD95 over images whose prediction
    is not empty (NaN if there is none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "SegmentationMeter",
    "dice",
    "hd95",
    "image_diagonal",
    "iou",
    "segmentation_scores",
    "surface_mask",
]

_HD_PERCENTILE = 95.0


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a boolean array; values must be 0/1 (or bool) so that probabilities are not
    silently thresholded at an arbitrary level."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"`{name}` should be a bool or 0/1 numeric array. Found dtype `{arr.dtype}`.")
    as_bool = arr != 0
    if not np.all(arr[as_bool] == 1):
        raise ValueError(
            f"`{name}` should hold only 0 and 1 (threshold probabilities or select a label first). "
            f"Found values {np.unique(arr)[:6].tolist()}."
        )
    return as_bool


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one 2-D prediction/target pair and return both as boolean arrays."""
    p, t = _as_mask(pred, "pred"), _as_mask(target, "target")
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(
            f"`pred` and `target` should be 2-D masks of the same shape. Found {p.shape} and {t.shape}."
        )
    return p, t


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 2 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            "Parameter `spacing` should be two positive (row, column) pixel sizes. "
            f"Found `spacing = {spacing}`."
        )
    return sp  # type: ignore[return-value]


def _overlap_counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return tp, fp, fn


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice = 2TP / (2TP + FP + FN) of two binary 2-D masks; 1.0 when both are empty."""
    tp, fp, fn = _overlap_counts(*_pair(pred, target))
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN) of two binary 2-D masks; 1.0 when both are empty."""
    tp, fp, fn = _overlap_counts(*_pair(pred, target))
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask: ``mask XOR binary_erosion(mask)`` with the 4-neighbour cross
    and background outside the image (MONAI's ``get_mask_edges`` convention)."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def image_diagonal(shape: tuple[int, ...], spacing: Sequence[float] | None = None) -> float:
    """``sqrt((H * sy)^2 + (W * sx)^2)``: the HD95 given when exactly one of the two masks is empty."""
    sy, sx = _check_spacing(spacing)
    return math.hypot(shape[0] * sy, shape[1] * sx)


def _hd95_bool(p: np.ndarray, t: np.ndarray, spacing: tuple[float, float]) -> float:
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 0.0
    if p_any != t_any:
        return math.hypot(p.shape[0] * spacing[0], p.shape[1] * spacing[1])
    # Every surface pixel lies inside the bounding box of the union, so the nearest-surface distances are
    # the same when computed on that crop; cropping keeps the distance transforms small. Pixels on the
    # edge of the box are background-adjacent in the full image too, so the surfaces do not change.
    rows = np.flatnonzero((p | t).any(axis=1))
    cols = np.flatnonzero((p | t).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sp, st = surface_mask(p[box]), surface_mask(t[box])
    # distance_transform_edt gives, at each pixel, the distance to the nearest zero, i.e. surface pixel.
    to_t = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return float(max(np.percentile(to_t, _HD_PERCENTILE), np.percentile(to_p, _HD_PERCENTILE)))


def hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of two binary 2-D masks.

    HD95 = max(P95(d(pred→target)), P95(d(target→pred))) over surface pixels (``mask XOR erosion`` with
    the 4-neighbour cross), Euclidean, in units of ``spacing`` = (row, column) pixel size, pixels if
    ``None``; linear-interpolated percentiles (MONAI ``compute_hausdorff_distance(percentile=95)``).
    Both masks empty → 0.0; exactly one empty → the image diagonal ``sqrt((H*sy)^2 + (W*sx)^2)``.
    """
    p, t = _pair(pred, target)
    return _hd95_bool(p, t, _check_spacing(spacing))


def segmentation_scores(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] | None = None
) -> dict[str, float]:
    """``{"dice", "iou", "hd95"}`` of one 2-D mask pair, with the definitions of :func:`dice`,
    :func:`iou` and :func:`hd95` (empty-mask policy included)."""
    p, t = _pair(pred, target)
    tp, fp, fn = _overlap_counts(p, t)
    union = tp + fp + fn
    return {
        "dice": 1.0 if union == 0 else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if union == 0 else tp / union,
        "hd95": _hd95_bool(p, t, _check_spacing(spacing)),
    }


class SegmentationMeter:
    """Streaming per-image Dice, IoU and HD95, averaged over images (not pooled over pixels).

    ``update`` takes one mask pair ``(H, W)`` or a batch ``(B, H, W)``; each image is scored with
    :func:`segmentation_scores` (same empty-mask policy) and the scores are summed. ``compute`` returns
    the means over all images seen since the last ``reset`` plus ``"n_images"``; with no image seen the
    means are NaN. The result equals the mean of :func:`segmentation_scores` over the concatenated data.
    """

    def __init__(self, spacing: tuple[float, float] | None = None) -> None:
        self.spacing = None if spacing is None else _check_spacing(spacing)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._sums = {"dice": 0.0, "iou": 0.0, "hd95": 0.0}
        self._n = 0
        self._empty_predictions = 0
        self._hd95_nonempty = 0.0
        self._n_nonempty = 0

    def update(
        self, pred: np.ndarray, target: np.ndarray, spacings: Sequence[tuple[float, float]] | None = None
    ) -> None:
        """Score and accumulate one ``(H, W)`` pair or a ``(B, H, W)`` batch of pairs.

        ``spacings`` gives each image's own pixel spacing (e.g. original pixels per pixel of a resized
        image, so that HD95 is reported in the original geometry); it overrides the meter's spacing.
        """
        p, t = np.asarray(pred), np.asarray(target)
        if p.shape != t.shape or p.ndim not in (2, 3):
            raise ValueError(
                f"`pred` and `target` should both be (H, W) or (B, H, W) with equal shapes. "
                f"Found {p.shape} and {t.shape}."
            )
        if p.ndim == 2:
            p, t = p[None], t[None]
        per_image = [self.spacing] * len(p) if spacings is None else [_check_spacing(sp) for sp in spacings]
        if len(per_image) != len(p):
            raise ValueError(
                f"`spacings` should have one entry per image. Found {len(per_image)} for {len(p)}."
            )
        for p_i, t_i, sp in zip(p, t, per_image, strict=True):
            scores = segmentation_scores(p_i, t_i, sp)
            for key, value in scores.items():
                self._sums[key] += value
            self._n += 1
            if p_i.any():
                self._hd95_nonempty += scores["hd95"]
                self._n_nonempty += 1
            elif t_i.any():
                self._empty_predictions += 1

    def compute(self) -> dict[str, float]:
        """Means over images of ``"dice"``, ``"iou"``, ``"hd95"`` (NaN if none), ``"n_images"``,
        ``"empty_predictions"`` and ``"hd95_nonempty"`` (see the module docstring)."""
        n = self._n
        out: dict[str, float] = {k: (v / n if n else math.nan) for k, v in self._sums.items()}
        out["n_images"] = n
        out["empty_predictions"] = self._empty_predictions
        out["hd95_nonempty"] = self._hd95_nonempty / self._n_nonempty if self._n_nonempty else math.nan
        return out

    def __repr__(self) -> str:
        return f"SegmentationMeter(spacing={self.spacing!r}, n_images={self._n})"
