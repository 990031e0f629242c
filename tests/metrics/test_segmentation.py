"""Dice, IoU and HD95: hand-computed cases, the empty-mask policy, and agreement with references
(scikit-learn for the overlaps, MONAI for HD95, plus a brute-force float64 HD95)."""

from __future__ import annotations

import math
import warnings
from types import ModuleType

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from mtlbench.metrics import SegmentationMeter, dice, hd95, iou, segmentation_scores, surface_mask


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random blob (possibly several components), like a nodule mask or a poor prediction."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(2.0, 6.0))
    return noise > np.quantile(noise, rng.uniform(0.6, 0.95))


def _random_cases(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float] | None]]:
    """``n`` seeded (pred, target, spacing) triples on non-square images; every other one has a spacing."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        shape = (int(rng.integers(16, 90)), int(rng.integers(16, 90)))
        spacing = None if i % 2 == 0 else (float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.3, 2.0)))
        cases.append((_blob(shape, rng), _blob(shape, rng), spacing))
    return cases


def _surface_by_neighbours(mask: np.ndarray) -> np.ndarray:
    """The documented surface rule written out directly: a foreground pixel with a background (or
    out-of-image) pixel among its 4 direct neighbours."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _brute_force_hd95(
    surf_pred: np.ndarray, surf_target: np.ndarray, spacing: tuple[float, float] | None
) -> float:
    scale = np.asarray(spacing if spacing is not None else (1.0, 1.0), dtype=np.float64)
    a = np.argwhere(surf_pred) * scale
    b = np.argwhere(surf_target) * scale
    d = cdist(a, b)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


# --- Dice and IoU ---------------------------------------------------------------------------------


def test_dice_iou_golden() -> None:
    pred = np.zeros((4, 5), dtype=bool)
    target = np.zeros((4, 5), dtype=bool)
    pred[0, :4] = True  # 4 pixels
    target[0, 2:] = True  # 3 pixels; overlap 2 → TP 2, FP 2, FN 1
    assert dice(pred, target) == pytest.approx(4 / 7)
    assert iou(pred, target) == pytest.approx(2 / 5)


@pytest.mark.parametrize("seed", range(3))
def test_dice_iou_match_sklearn(seed: int) -> None:
    from sklearn.metrics import f1_score, jaccard_score

    for pred, target, _ in _random_cases(5, seed):
        # For binary masks, pixel-wise F1 of the foreground is Dice and the Jaccard score is IoU.
        assert dice(pred, target) == pytest.approx(f1_score(target.ravel(), pred.ravel()), abs=1e-12)
        assert iou(pred, target) == pytest.approx(jaccard_score(target.ravel(), pred.ravel()), abs=1e-12)
        assert dice(pred, target) == pytest.approx(2 * iou(pred, target) / (1 + iou(pred, target)))


def test_masks_accept_bool_int_and_float_01() -> None:
    rng = np.random.default_rng(3)
    pred, target = _blob((30, 40), rng), _blob((30, 40), rng)
    expected = segmentation_scores(pred, target)
    for dtype in (np.uint8, np.int64, np.float32):
        assert segmentation_scores(pred.astype(dtype), target.astype(dtype)) == expected


def test_invalid_masks_raise() -> None:
    target = np.zeros((8, 8), dtype=bool)
    with pytest.raises(ValueError, match="only 0 and 1"):
        dice(np.full((8, 8), 0.7), target)
    with pytest.raises(ValueError, match="only 0 and 1"):
        hd95(np.full((8, 8), np.nan), target)
    with pytest.raises(ValueError, match="same shape"):
        iou(np.zeros((8, 9), dtype=bool), target)
    with pytest.raises(ValueError, match="2-D"):
        dice(np.zeros((1, 8, 8), dtype=bool), np.zeros((1, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(target, target, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(target, target, spacing=(1.0, 1.0, 1.0))  # type: ignore[arg-type]


# --- Empty-mask policy ----------------------------------------------------------------------------


def test_both_empty() -> None:
    empty = np.zeros((30, 40), dtype=bool)
    assert segmentation_scores(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert segmentation_scores(empty, empty, spacing=(0.5, 2.0))["hd95"] == 0.0


@pytest.mark.parametrize(
    ("spacing", "diagonal"), [(None, 50.0), ((0.5, 2.0), math.hypot(15.0, 80.0)), ((1.0, 1.0), 50.0)]
)
def test_one_empty_gives_zero_overlap_and_image_diagonal(
    spacing: tuple[float, float] | None, diagonal: float
) -> None:
    empty = np.zeros((30, 40), dtype=bool)
    nodule = np.zeros((30, 40), dtype=bool)
    nodule[10:14, 5:9] = True
    for pred, target in ((empty, nodule), (nodule, empty)):
        scores = segmentation_scores(pred, target, spacing=spacing)
        assert scores["dice"] == 0.0
        assert scores["iou"] == 0.0
        assert scores["hd95"] == pytest.approx(diagonal, abs=1e-12)
        assert hd95(pred, target, spacing=spacing) == scores["hd95"]


def test_one_empty_is_worse_than_any_contour() -> None:
    # The diagonal bounds every pixel-centre distance, so a missed nodule never beats a bad contour.
    pred = np.zeros((30, 40), dtype=bool)
    target = np.zeros((30, 40), dtype=bool)
    pred[0, 0] = True
    target[-1, -1] = True
    assert hd95(pred, target) < hd95(np.zeros_like(pred), target)


# --- Surface and HD95, hand computed --------------------------------------------------------------


def test_surface_uses_the_4_neighbour_cross() -> None:
    diamond = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=bool,
    )
    # The inner plus has all 4 direct neighbours inside; a full 3x3 element would also strip its arms.
    expected = diamond.copy()
    expected[1:4, 2] = False
    expected[2, 1:4] = False
    np.testing.assert_array_equal(surface_mask(diamond), expected)


def test_surface_includes_pixels_on_the_image_border() -> None:
    full = np.ones((5, 6), dtype=bool)
    expected = np.ones((5, 6), dtype=bool)
    expected[1:-1, 1:-1] = False
    np.testing.assert_array_equal(surface_mask(full), expected)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_lines_offset_by_k(k: int) -> None:
    # One-pixel-thick lines are their own surface; each pixel's nearest counterpart is k rows away.
    pred = np.zeros((20, 30), dtype=bool)
    target = np.zeros((20, 30), dtype=bool)
    pred[5, 4:25] = True
    target[5 + k, 4:25] = True
    assert hd95(pred, target) == pytest.approx(k, abs=1e-12)
    assert hd95(pred, target, spacing=(2.0, 0.5)) == pytest.approx(2.0 * k, abs=1e-12)
    assert hd95(pred.T, target.T, spacing=(0.5, 2.0)) == pytest.approx(2.0 * k, abs=1e-12)


def test_single_pixels_3_4_5() -> None:
    pred = np.zeros((10, 10), dtype=bool)
    target = np.zeros((10, 10), dtype=bool)
    pred[1, 1] = True
    target[4, 5] = True
    assert hd95(pred, target) == pytest.approx(5.0, abs=1e-12)
    assert hd95(pred, target, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(6.0, 4.0), abs=1e-12)


def test_identical_masks_have_zero_distance() -> None:
    mask = _blob((40, 50), np.random.default_rng(7))
    assert segmentation_scores(mask, mask) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}


def test_concentric_squares_hd95_differs_from_hd() -> None:
    # Target: square of side 81; pred: the same square grown by m = 2 on every side. Every target surface
    # pixel is m from the pred surface; on the pred surface only the 12 pixels past the target's corners
    # are farther (8 at sqrt(5), 4 at 2*sqrt(2)), 12 of 336 < 5 %, so the 95th percentile is exactly m
    # while the plain Hausdorff distance would be 2*sqrt(2).
    target = np.zeros((101, 101), dtype=bool)
    target[10:91, 10:91] = True
    pred = ndimage.binary_dilation(target, structure=np.ones((3, 3)), iterations=2)
    assert int(surface_mask(pred).sum()) == 336
    assert hd95(pred, target) == pytest.approx(2.0, abs=1e-12)
    assert hd95(target, pred) == pytest.approx(2.0, abs=1e-12)


def test_hd95_is_symmetric_and_translation_invariant() -> None:
    for pred, target, spacing in _random_cases(6, seed=11):
        value = hd95(pred, target, spacing)
        assert hd95(target, pred, spacing) == value
        shifted = (np.pad(pred, ((3, 0), (0, 5))), np.pad(target, ((3, 0), (0, 5))))
        assert hd95(*shifted, spacing) == pytest.approx(value, abs=1e-12)


# --- HD95 against references ----------------------------------------------------------------------


def test_hd95_matches_brute_force_definition() -> None:
    # Library-independent: the neighbour rule and all pairwise distances in float64.
    for pred, target, spacing in _random_cases(20, seed=0):
        expected = _brute_force_hd95(_surface_by_neighbours(pred), _surface_by_neighbours(target), spacing)
        assert hd95(pred, target, spacing) == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def monai_metrics() -> ModuleType:
    return pytest.importorskip("monai.metrics", reason="MONAI is the HD95 reference (pip install monai)")


def test_surface_matches_monai_get_mask_edges(monai_metrics: ModuleType) -> None:
    from monai.metrics.utils import get_mask_edges

    for pred, target, spacing in _random_cases(20, seed=0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edges_pred, edges_target = get_mask_edges(pred, target, crop=False)
        np.testing.assert_array_equal(surface_mask(pred), np.asarray(edges_pred))
        np.testing.assert_array_equal(surface_mask(target), np.asarray(edges_target))
        # MONAI's edges with float64 distances: agreement to rounding, not just float32 precision.
        expected = _brute_force_hd95(np.asarray(edges_pred), np.asarray(edges_target), spacing)
        assert hd95(pred, target, spacing) == pytest.approx(expected, abs=1e-9)


def test_hd95_matches_monai_compute_hausdorff_distance(monai_metrics: ModuleType) -> None:
    import torch

    for pred, target, spacing in _random_cases(20, seed=0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = monai_metrics.compute_hausdorff_distance(
                torch.from_numpy(pred)[None, None],
                torch.from_numpy(target)[None, None],
                include_background=True,
                percentile=95,
                spacing=spacing,
            ).item()
        # MONAI returns float32: compare relative to float32 resolution (about 1.2e-7).
        assert hd95(pred, target, spacing) == pytest.approx(reference, rel=1e-6, abs=1e-6)


# --- Meter ----------------------------------------------------------------------------------------


def _batches(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shape = (32, 48)
    batches = []
    for size in (3, 1, 4):
        pred = np.stack([_blob(shape, rng) for _ in range(size)])
        target = np.stack([_blob(shape, rng) for _ in range(size)])
        batches.append((pred, target))
    batches[0][0][1] = False  # a missed nodule
    batches[2][0][0] = False  # both empty
    batches[2][1][0] = False
    return batches


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3)])
def test_meter_equals_mean_of_one_shot_scores(spacing: tuple[float, float] | None) -> None:
    batches = _batches(seed=5)
    meter = SegmentationMeter(spacing=spacing)
    for pred, target in batches:
        meter.update(pred.astype(np.uint8), target)
    result = meter.compute()

    preds = np.concatenate([p for p, _ in batches])
    targets = np.concatenate([t for _, t in batches])
    per_image = [segmentation_scores(p, t, spacing) for p, t in zip(preds, targets, strict=True)]
    assert result["n_images"] == len(preds) == 8
    for key in ("dice", "iou", "hd95"):
        assert result[key] == pytest.approx(np.mean([s[key] for s in per_image]), rel=1e-12, abs=1e-12)


def test_meter_single_images_reset_and_empty() -> None:
    meter = SegmentationMeter()
    empty = meter.compute()
    assert empty["n_images"] == 0
    assert all(math.isnan(empty[k]) for k in ("dice", "iou", "hd95"))

    pred, target = _batches(seed=2)[0]
    for p, t in zip(pred, target, strict=True):
        meter.update(p, t)
    by_image = meter.compute()
    meter.reset()
    assert meter.compute()["n_images"] == 0
    meter.update(pred, target)
    assert meter.compute() == pytest.approx(by_image)

    with pytest.raises(ValueError, match="equal shapes"):
        meter.update(pred, target[:1])
    with pytest.raises(ValueError, match="equal shapes"):
        meter.update(pred[None], target[None])


def test_meter_per_image_spacing_scales_hd95() -> None:
    from mtlbench.metrics.segmentation import SegmentationMeter, hd95

    a = np.zeros((2, 20, 20), dtype=bool)
    b = np.zeros((2, 20, 20), dtype=bool)
    a[:, 5:10, 5:10] = True
    b[:, 7:12, 5:10] = True
    meter = SegmentationMeter()
    meter.update(a, b, spacings=[(1.0, 1.0), (2.5, 2.5)])
    expected = (hd95(a[0], b[0]) + hd95(a[1], b[1], spacing=(2.5, 2.5))) / 2
    assert meter.compute()["hd95"] == pytest.approx(expected)
    assert hd95(a[1], b[1], spacing=(2.5, 2.5)) == pytest.approx(2.5 * hd95(a[0], b[0]))


def test_meter_reports_empty_predictions_beside_hd95() -> None:
    target = np.zeros((2, 16, 16), dtype=bool)
    target[:, 4:10, 4:10] = True
    pred = target.copy()
    pred[1] = False  # an empty prediction: HD95 = the image diagonal
    meter = SegmentationMeter()
    meter.update(pred, target)
    out = meter.compute()
    assert out["empty_predictions"] == 1
    assert out["hd95"] == pytest.approx(math.hypot(16, 16) / 2)
    assert out["hd95_nonempty"] == 0.0  # the one non-empty prediction is exact
    both_empty = SegmentationMeter()
    both_empty.update(np.zeros((8, 8), bool), np.zeros((8, 8), bool))
    assert both_empty.compute()["empty_predictions"] == 0
    assert math.isnan(SegmentationMeter().compute()["hd95_nonempty"])
