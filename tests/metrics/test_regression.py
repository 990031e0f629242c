"""Clinical-slice regression error: missing rows, per-feature scores, the R² convention, and agreement
with scikit-learn on the rows that are scored."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mtlbench.metrics import RegressionMeter, regression_scores

sk_metrics = pytest.importorskip(
    "sklearn.metrics", reason="scikit-learn is the reference (pip install scikit-learn)"
)

NUM_FEATURES = 13


def _data(seed: int, n: int = 120, num_features: int = NUM_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Standardised targets with ~15 % missing rows (all NaN) and a few rows with a single NaN."""
    rng = np.random.default_rng(seed)
    target = rng.standard_normal((n, num_features))
    pred = 0.7 * target + 0.5 * rng.standard_normal((n, num_features)) + 0.1
    target[rng.random(n) < 0.15] = np.nan
    partial = rng.choice(n, size=4, replace=False)
    target[partial, rng.integers(0, num_features, size=4)] = np.nan
    return pred, target


def _assert_matches_sklearn(scores: dict, pred: np.ndarray, target: np.ndarray) -> None:
    keep = ~np.isnan(target).any(axis=1)
    p, t = pred[keep], target[keep]
    assert scores["n_samples"] == int(keep.sum())
    assert scores["mse"] == pytest.approx(sk_metrics.mean_squared_error(t, p), abs=1e-12)
    assert scores["mae"] == pytest.approx(sk_metrics.mean_absolute_error(t, p), abs=1e-12)
    assert scores["r2"] == pytest.approx(sk_metrics.r2_score(t, p), abs=1e-12)
    mse = sk_metrics.mean_squared_error(t, p, multioutput="raw_values")
    mae = sk_metrics.mean_absolute_error(t, p, multioutput="raw_values")
    r2 = sk_metrics.r2_score(t, p, multioutput="raw_values")
    per_feature = list(scores["per_feature"].values())
    for j in range(t.shape[1]):
        assert per_feature[j]["mse"] == pytest.approx(mse[j], abs=1e-12)
        assert per_feature[j]["mae"] == pytest.approx(mae[j], abs=1e-12)
        assert per_feature[j]["r2"] == pytest.approx(r2[j], abs=1e-12)


def test_golden_values() -> None:
    target = np.array([[0.0, 1.0], [2.0, np.nan], [2.0, 3.0], [4.0, 5.0]])
    pred = np.array([[1.0, 1.0], [100.0, 100.0], [2.0, 1.0], [4.0, 5.0]])
    scores = regression_scores(pred, target, feature_names=["size", "shape"])
    # Row 1 is missing (NaN in target), so its huge error is ignored.
    assert scores["n_samples"] == 3
    assert scores["per_feature"]["size"] == pytest.approx({"mse": 1 / 3, "mae": 1 / 3, "r2": 1 - 1 / 8})
    assert scores["per_feature"]["shape"] == pytest.approx({"mse": 4 / 3, "mae": 2 / 3, "r2": 1 - 4 / 8})
    assert scores["mse"] == pytest.approx(5 / 6)
    assert scores["mae"] == pytest.approx(0.5)
    assert scores["r2"] == pytest.approx((7 / 8 + 1 / 2) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_matches_sklearn_on_scored_rows(seed: int) -> None:
    pred, target = _data(seed)
    scores = regression_scores(pred, target)
    assert list(scores["per_feature"]) == [f"feature{j}" for j in range(NUM_FEATURES)]
    _assert_matches_sklearn(scores, pred, target)


def test_constant_target_feature_follows_sklearn_convention() -> None:
    rng = np.random.default_rng(4)
    target = rng.standard_normal((30, 3))
    target[:, 1] = 0.25  # constant: R² is 1 if predicted exactly, else 0
    target[:, 2] = -1.0
    pred = target + 0.3 * rng.standard_normal((30, 3))
    pred[:, 1] = 0.25
    scores = regression_scores(pred, target)
    assert scores["per_feature"]["feature1"]["r2"] == 1.0
    assert scores["per_feature"]["feature2"]["r2"] == 0.0
    _assert_matches_sklearn(scores, pred, target)


def test_no_scored_row_gives_nan() -> None:
    scores = regression_scores(np.zeros((3, 2)), np.full((3, 2), np.nan))
    assert scores["n_samples"] == 0
    assert all(math.isnan(scores[k]) for k in ("mse", "mae", "r2"))
    assert all(math.isnan(v) for fs in scores["per_feature"].values() for v in fs.values())


def test_single_row_has_errors_but_no_r2() -> None:
    scores = regression_scores(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    assert scores["n_samples"] == 1
    assert scores["mse"] == pytest.approx(2.5)
    assert scores["mae"] == pytest.approx(1.5)
    assert math.isnan(scores["r2"])


def test_nan_prediction_propagates() -> None:
    pred, target = _data(seed=0, n=20)
    keep = np.flatnonzero(~np.isnan(target).any(axis=1))
    pred[keep[0], 3] = np.nan
    scores = regression_scores(pred, target)
    assert math.isnan(scores["mse"])
    assert math.isnan(scores["per_feature"]["feature3"]["mae"])
    assert not math.isnan(scores["per_feature"]["feature2"]["mae"])


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="equal shapes"):
        regression_scores(np.zeros((4, 13)), np.zeros((4, 12)))
    with pytest.raises(ValueError, match="equal shapes"):
        regression_scores(np.zeros((2, 4, 13)), np.zeros((2, 4, 13)))
    with pytest.raises(ValueError, match="`feature_names`"):
        regression_scores(np.zeros((4, 2)), np.zeros((4, 2)), feature_names=["a"])
    meter = RegressionMeter(num_features=3)
    with pytest.raises(ValueError, match="Expected 3 features"):
        meter.update(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="num_features"):
        RegressionMeter().compute()
    with pytest.raises(ValueError, match="num_features"):
        RegressionMeter(feature_names=["a", "b"], num_features=3)


@pytest.mark.parametrize("seed", range(3))
def test_meter_equals_one_shot_on_concatenated_data(seed: int) -> None:
    pred, target = _data(seed, n=101)
    # Shift the targets far from zero so that a naive streaming variance would lose precision.
    pred, target = pred + 1e4, target + 1e4
    names = [f"radiomic{j}" for j in range(NUM_FEATURES)]
    meter = RegressionMeter(feature_names=names)
    target[20:25] = np.nan  # a batch that is entirely missing
    bounds = [0, 1, 20, 25, 25, 70, 101]
    for lo, hi in itertools.pairwise(bounds):
        meter.update(pred[lo:hi], target[lo:hi])
    streamed = meter.compute()
    one_shot = regression_scores(pred, target, feature_names=names)
    assert streamed["n_samples"] == one_shot["n_samples"]
    assert list(streamed["per_feature"]) == names
    for key in ("mse", "mae", "r2"):
        assert streamed[key] == pytest.approx(one_shot[key], rel=1e-10, abs=1e-12)
        for name in names:
            assert streamed["per_feature"][name][key] == pytest.approx(
                one_shot["per_feature"][name][key], rel=1e-10, abs=1e-12
            )


def test_meter_reset_and_known_width_before_update() -> None:
    meter = RegressionMeter(num_features=2)
    empty = meter.compute()
    assert empty["n_samples"] == 0 and math.isnan(empty["mse"])
    assert list(empty["per_feature"]) == ["feature0", "feature1"]
    meter.update(np.ones((3, 2)), np.zeros((3, 2)))
    assert meter.compute()["mse"] == 1.0
    meter.reset()
    assert meter.compute()["n_samples"] == 0
    meter.update(np.array([2.0, 2.0]), np.array([0.0, 0.0]))  # one (F,) row
    assert meter.compute()["mae"] == 2.0
