"""Regression error of the "clinical slice": a predicted feature vector against standardised targets.

Definitions (``pred`` and ``target`` are ``(N, F)``; a single ``(F,)`` row is accepted):

- Missing rows: a row whose ``target`` holds any NaN is missing and ignored entirely (all its features),
  so every feature is scored on the same ``n_samples`` rows. NaN or inf in ``pred`` on a scored row is
  not hidden: it propagates into the scores.
- Per feature ``j`` over the scored rows: MSE = mean((pred - target)^2), MAE = mean(|pred - target|),
  R² = 1 - SS_res / SS_tot with SS_tot = Σ (target - mean(target))^2; if SS_tot = 0, R² = 1 when
  SS_res = 0 and 0 otherwise; R² is NaN with fewer than 2 rows (scikit-learn's ``r2_score``).
- Overall: ``"mse"`` and ``"mae"`` are means over all scored entries (= the mean of the per-feature values,
  the row count being shared); ``"r2"`` is the unweighted mean of the per-feature R² (scikit-learn's
  ``multioutput="uniform_average"``). With no scored row every score is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["RegressionMeter", "regression_scores"]


def _feature_names(feature_names: Sequence[str] | None, num_features: int) -> list[str]:
    if feature_names is None:
        return [f"feature{j}" for j in range(num_features)]
    names = [str(n) for n in feature_names]
    if len(names) != num_features or len(set(names)) != num_features:
        raise ValueError(
            f"Parameter `feature_names` should hold {num_features} distinct names. "
            f"Found `feature_names = {names}`."
        )
    return names


def _rows(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return the scored rows of ``pred`` and ``target`` as float64 ``(n, F)``."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if t.ndim == 1:
        t = t[None]
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(
            f"`pred` and `target` should both be (N, F) with equal shapes. Found {p.shape} and {t.shape}."
        )
    keep = ~np.isnan(t).any(axis=1)
    return p[keep], t[keep]


def _r2(n: int, ss_res: np.ndarray, ss_tot: np.ndarray) -> np.ndarray:
    if n < 2:
        return np.full(ss_res.shape, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    constant = ss_tot == 0
    r2[constant] = np.where(ss_res[constant] == 0, 1.0, 0.0)
    return r2


def _scores(n: int, sse: np.ndarray, sae: np.ndarray, ss_tot: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Assemble the result dictionary from per-feature sufficient statistics over ``n`` rows."""
    num_features = len(names)
    if n == 0:
        mse = mae = r2 = np.full(num_features, math.nan)
    else:
        mse, mae, r2 = sse / n, sae / n, _r2(n, sse, ss_tot)
    return {
        "mse": float(mse.mean()) if n else math.nan,
        "mae": float(mae.mean()) if n else math.nan,
        "r2": float(r2.mean()) if n else math.nan,
        "n_samples": n,
        "per_feature": {
            name: {"mse": float(mse[j]), "mae": float(mae[j]), "r2": float(r2[j])}
            for j, name in enumerate(names)
        },
    }


def regression_scores(
    pred: np.ndarray, target: np.ndarray, feature_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """MSE, MAE and R² overall and per feature; rows with NaN in ``target`` are ignored.

    Returns ``{"mse", "mae", "r2", "n_samples", "per_feature": {name: {"mse", "mae", "r2"}}}`` with the
    definitions of the module docstring (R² overall = mean of per-feature R², as scikit-learn's default).
    """
    p, t = _rows(pred, target)
    names = _feature_names(feature_names, p.shape[1])
    err = p - t
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0) if len(t) else np.zeros(p.shape[1])
    return _scores(len(t), (err**2).sum(axis=0), np.abs(err).sum(axis=0), ss_tot, names)


class RegressionMeter:
    """Streaming :func:`regression_scores` over batches of ``(B, F)`` rows.

    Keeps per-feature sums of squared and absolute errors, and the running target mean and sum of
    squared deviations merged batch by batch (Chan et al.'s parallel update), so ``compute()`` equals
    :func:`regression_scores` on the concatenated data up to floating-point rounding.
    """

    def __init__(self, feature_names: Sequence[str] | None = None, num_features: int | None = None) -> None:
        if feature_names is not None and num_features is not None and len(feature_names) != num_features:
            raise ValueError(
                f"`feature_names` has {len(feature_names)} names but `num_features = {num_features}`."
            )
        self._given_names = None if feature_names is None else list(feature_names)
        self._num_features = len(feature_names) if feature_names is not None else num_features
        self.reset()

    def reset(self) -> None:
        """Forget every row seen so far."""
        self._n = 0
        # Rows: sum of squared errors, sum of absolute errors, target mean, target sum of squared deviations.
        self._stats: np.ndarray | None = None

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add a ``(B, F)`` batch (or one ``(F,)`` row); rows with NaN in ``target`` are skipped."""
        p, t = _rows(pred, target)
        num_features = p.shape[1]
        if self._num_features is None:
            self._num_features = num_features
        if num_features != self._num_features:
            raise ValueError(f"Expected {self._num_features} features per row. Found {num_features}.")
        b = len(t)
        if b == 0:
            return
        if self._stats is None:
            self._stats = np.zeros((4, num_features))
        sse, sae, mean, m2 = self._stats
        err = p - t
        sse += (err**2).sum(axis=0)
        sae += np.abs(err).sum(axis=0)
        batch_mean = t.mean(axis=0)
        n_ab = self._n + b
        delta = batch_mean - mean
        m2 += ((t - batch_mean) ** 2).sum(axis=0) + delta**2 * (self._n * b / n_ab)
        mean += delta * (b / n_ab)
        self._n = n_ab

    def compute(self) -> dict[str, Any]:
        """The :func:`regression_scores` dictionary of everything seen since the last ``reset``."""
        if self._num_features is None:
            raise ValueError("RegressionMeter.compute() needs `feature_names`, `num_features` or one update.")
        names = _feature_names(self._given_names, self._num_features)
        stats = np.zeros((4, self._num_features)) if self._stats is None else self._stats
        return _scores(self._n, stats[0], stats[1], stats[3], names)

    def __repr__(self) -> str:
        return f"RegressionMeter(num_features={self._num_features}, n_samples={self._n})"
