"""The dense scene metrics and losses against independent computations (scikit-learn, plain numpy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score

from mtlbench.model import ModelOutput
from mtlbench.tasks.nyuv2.metrics import (
    DenseEvaluator,
    delta_m,
    depth_loss,
    normal_loss,
    segmentation_loss,
)

C = 5


def _batches(seed: int = 0, sizes: tuple[int, ...] = (2, 3, 1), h: int = 6, w: int = 7):
    """Uneven batches with ignore labels, invalid depths (0) and invalid (all-zero) normals."""
    rng = np.random.default_rng(seed)
    out = []
    for b in sizes:
        label = rng.integers(-1, C, size=(b, h, w))
        label[0, 0, :3] = 99  # outside [0, C): ignored by the metrics as well
        logits = rng.normal(size=(b, C, h, w))
        depth_gt = rng.uniform(0.5, 5.0, size=(b, 1, h, w))
        depth_gt[rng.random((b, 1, h, w)) < 0.3] = 0.0
        depth_pred = depth_gt + rng.normal(scale=0.5, size=depth_gt.shape)
        normal_gt = rng.normal(size=(b, 3, h, w))
        normal_gt /= np.linalg.norm(normal_gt, axis=1, keepdims=True)
        normal_gt[:, :, rng.random((h, w)) < 0.3] = 0.0
        normal_pred = normal_gt * 2.0 + rng.normal(scale=0.6, size=normal_gt.shape)  # not unit length
        out.append((label, logits, depth_gt, depth_pred, normal_gt, normal_pred))
    return out


def _evaluate(batches, tasks=("seg", "depth", "normal"), baselines=None):  # type: ignore[no-untyped-def]
    ev = DenseEvaluator(tasks, C, baselines)
    for label, logits, depth_gt, depth_pred, normal_gt, normal_pred in batches:
        t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        output = ModelOutput(
            features=[], outputs={"seg": t(logits), "depth": t(depth_pred), "normal": t(normal_pred)}
        )
        batch = {
            "seg": torch.tensor(label),
            "depth": t(depth_gt),
            "normal": t(normal_gt),
            "split_id": torch.ones(len(label), dtype=torch.int64),
        }
        ev.update(output, batch)
    return ev.compute()


def test_segmentation_matches_scikit_learn() -> None:
    batches = _batches()
    metrics = _evaluate(batches)
    y_true = np.concatenate([b[0].ravel() for b in batches])
    y_pred = np.concatenate([b[1].argmax(1).ravel() for b in batches])
    keep = (y_true >= 0) & (y_true < C)
    y_true, y_pred = y_true[keep], y_pred[keep]
    assert metrics["pixel_acc"] == pytest.approx(accuracy_score(y_true, y_pred), rel=1e-12)
    iou = jaccard_score(y_true, y_pred, labels=list(range(C)), average=None)
    assert metrics["iou_per_class"] == pytest.approx(list(iou), rel=1e-12)
    assert metrics["miou"] == pytest.approx(iou.mean(), rel=1e-12)


def test_miou_leaves_out_a_class_absent_from_targets_and_predictions() -> None:
    label = np.array([[[0, 0, 1, 1, -1]]])
    logits = np.zeros((1, C, 1, 5))
    logits[0, 0, 0, [0, 2]] = 1.0  # predicts 0, 1, 0, 1, 0
    logits[0, 1, 0, [1, 3]] = 1.0
    logits[0, 1, 0, 4] = 9.0  # at the ignored pixel: must not count
    batch = (
        label,
        logits,
        np.ones((1, 1, 1, 5)),
        np.ones((1, 1, 1, 5)),
        np.ones((1, 3, 1, 5)),
        np.ones((1, 3, 1, 5)),
    )
    metrics = _evaluate([batch], tasks=("seg",))
    cm = confusion_matrix([0, 0, 1, 1], [0, 1, 0, 1], labels=list(range(C)))
    assert cm.sum() == 4 and metrics["pixel_acc"] == pytest.approx(0.5)
    assert metrics["miou"] == pytest.approx((1 / 3 + 1 / 3) / 2)  # classes 2..4 never occur
    assert metrics["iou_per_class"][2:] == [None, None, None]


def test_depth_errors_over_every_valid_pixel_of_the_split() -> None:
    batches = _batches(seed=1)
    metrics = _evaluate(batches, tasks=("depth",))
    gt = np.concatenate([b[2].ravel() for b in batches])
    pred = np.concatenate([b[3].ravel() for b in batches])
    valid = gt != 0
    assert metrics["abs_err"] == pytest.approx(np.abs(pred - gt)[valid].mean(), rel=1e-5)
    assert metrics["rel_err"] == pytest.approx((np.abs(pred - gt)[valid] / gt[valid]).mean(), rel=1e-5)
    # predictions at invalid pixels do not count
    spoiled = [(*b[:3], np.where(b[2] == 0, 1e6, b[3]), *b[4:]) for b in batches]
    assert _evaluate(spoiled, tasks=("depth",))["abs_err"] == pytest.approx(metrics["abs_err"], rel=1e-6)


def _angles_numpy(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per valid pixel: the angle in degrees between the normalised prediction and the target."""
    p = np.moveaxis(pred, 1, -1).reshape(-1, 3)
    g = np.moveaxis(gt, 1, -1).reshape(-1, 3)
    valid = g.sum(-1) != 0
    p = p[valid] / np.linalg.norm(p[valid], axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip((p * g[valid]).sum(-1), -1.0, 1.0)))


def test_normal_errors_match_a_direct_numpy_formula() -> None:
    batches = _batches(seed=2)
    metrics = _evaluate(batches, tasks=("normal",))
    errors = np.concatenate([_angles_numpy(b[5], b[4]) for b in batches])
    assert metrics["angle_mean"] == pytest.approx(errors.mean(), rel=1e-5)
    assert metrics["angle_median"] == pytest.approx(np.median(errors), rel=1e-4)
    for key, threshold in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0)):
        assert metrics[key] == pytest.approx((errors < threshold).mean(), abs=1e-12)
    spoiled = [(*b[:5], np.where(b[4] == 0, -7.0, b[5])) for b in batches]
    assert _evaluate(spoiled, tasks=("normal",))["angle_mean"] == pytest.approx(
        metrics["angle_mean"], rel=1e-6
    )


def test_known_angles() -> None:
    gt = np.zeros((1, 3, 1, 4))
    gt[0, 2] = 1.0  # +z
    gt[0, :, 0, 3] = 0.0  # invalid
    angles = np.radians([0.0, 20.0, 45.0])
    pred = np.zeros((1, 3, 1, 4))
    pred[0, 0, 0, :3] = np.sin(angles) * 3
    pred[0, 2, 0, :3] = np.cos(angles) * 3
    batch = (
        np.zeros((1, 1, 4), int),
        np.zeros((1, C, 1, 4)),
        np.ones((1, 1, 1, 4)),
        np.ones((1, 1, 1, 4)),
        gt,
        pred,
    )
    metrics = _evaluate([batch], tasks=("normal",))
    assert metrics["angle_mean"] == pytest.approx(65 / 3, abs=1e-3)
    assert metrics["angle_median"] == pytest.approx(20.0, abs=1e-3)
    assert (metrics["within_11_25"], metrics["within_22_5"], metrics["within_30"]) == pytest.approx(
        (1 / 3, 2 / 3, 2 / 3)
    )


def test_losses_against_direct_formulas() -> None:
    label, logits, depth_gt, depth_pred, normal_gt, normal_pred = _batches(seed=3)[0]
    label = np.where(label >= C, -1, label)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    keep = label >= 0
    log_p = torch.log_softmax(t(logits), 1).numpy()
    ce = -np.take_along_axis(log_p, np.where(keep, label, 0)[:, None], 1)[:, 0][keep].mean()
    assert float(segmentation_loss(t(logits), torch.tensor(label))) == pytest.approx(ce, rel=1e-5)
    valid = depth_gt != 0
    assert float(depth_loss(t(depth_pred), t(depth_gt))) == pytest.approx(
        np.abs(depth_pred - depth_gt)[valid].mean(), rel=1e-5
    )
    cosines = np.cos(np.radians(_angles_numpy(normal_pred, normal_gt)))
    assert float(normal_loss(t(normal_pred), t(normal_gt))) == pytest.approx(1 - cosines.mean(), rel=1e-5)


def test_losses_without_a_valid_pixel_are_zero_with_a_gradient() -> None:
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    for loss in (
        segmentation_loss(pred, torch.full((1, 2, 2), -1)),
        depth_loss(pred[:, :1], torch.zeros(1, 1, 2, 2)),
        normal_loss(pred, torch.zeros(1, 3, 2, 2)),
    ):
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert torch.isfinite(pred.grad).all()


def test_gradient_of_the_normal_loss_ignores_invalid_pixels() -> None:
    gt = F.normalize(torch.randn(1, 3, 3, 3), dim=1)
    gt[..., 0, 0] = 0.0
    pred = torch.randn(1, 3, 3, 3, requires_grad=True)
    normal_loss(pred, gt).backward()
    assert torch.all(pred.grad[..., 0, 0] == 0)


def test_delta_m_by_hand_from_two_result_files(tmp_path: Path) -> None:
    """Δm% = 100/K Σ (−1)^{higher better} (M − B)/B over the 4 Cityscapes metrics."""
    mtl = {"metrics": {"test": {"miou": 0.55, "pixel_acc": 0.80, "abs_err": 0.0150, "rel_err": 0.40}}}
    stl = {"metrics": {"test": {"miou": 0.50, "pixel_acc": 0.80, "abs_err": 0.0125, "rel_err": 0.50}}}
    (tmp_path / "mtl.json").write_text(json.dumps(mtl))
    (tmp_path / "stl.json").write_text(json.dumps(stl))
    m = json.loads((tmp_path / "mtl.json").read_text())["metrics"]["test"]
    b = json.loads((tmp_path / "stl.json").read_text())["metrics"]["test"]
    # by hand: mIoU +10% better → −10; pix acc equal → 0; abs err +20% worse → +20; rel err −20% → −20
    expected = 100 * (-0.10 + 0.0 + 0.20 - 0.20) / 4
    assert expected == pytest.approx(-2.5)
    assert delta_m(m, b, ("seg", "depth")) == pytest.approx(expected, rel=1e-12)
    assert delta_m(b, b, ("seg", "depth")) == 0.0
    assert math.isnan(delta_m(m, {**b, "rel_err": 0.0}, ("seg", "depth")))


def test_delta_m_over_all_nine_nyuv2_metrics() -> None:
    keys = [
        "miou",
        "pixel_acc",
        "abs_err",
        "rel_err",
        "angle_mean",
        "angle_median",
        "within_11_25",
        "within_22_5",
        "within_30",
    ]
    base = dict.fromkeys(keys, 1.0)
    better = dict(base, miou=1.09, angle_mean=0.91)  # each 9% better
    assert delta_m(better, base, ("seg", "depth", "normal")) == pytest.approx(-2.0)


def test_evaluator_reports_delta_m_for_the_split_it_has_baselines_for() -> None:
    batches = _batches(seed=4)
    alone = _evaluate(batches)
    assert "delta_m" not in alone
    baseline = {k: v for k, v in alone.items() if isinstance(v, float)}
    same = _evaluate(batches, baselines={1: baseline})
    assert same["delta_m"] == pytest.approx(0.0, abs=1e-9)
    assert "delta_m" not in _evaluate(batches, baselines={0: baseline})  # another split's baselines
    assert math.isfinite(alone["loss"])
