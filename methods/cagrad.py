"""CAGrad — conflict-averse gradient descent (Liu et al., NeurIPS 2021).

With M = GGᵀ, g_0 = mean_t g_t (so ‖g_0‖ = √mean(M)) and c = α·‖g_0‖, solve over the simplex::

    w = argmin_{w ∈ Δ_T}  wᵀM𝟙/T + c·√(wᵀMw)

and update with ``d = g_0 + (c / ‖Gw‖)·Gw``, i.e. the maximiser of min_t ⟨g_t, d⟩ over the ball
‖d − g_0‖ ≤ c. Then ``rescale``: 0 → d, 1 → d/(1+α²) (the paper's scripts), 2 → d/(1+α).

Conventions pinned here:

* ``scale_by_tasks`` (default True, the official code: it multiplies by T "to match the sum loss")
  multiplies the result by T, so it has the scale of the summed gradient like PCGrad. LibMTL does
  not (set ``scale_by_tasks=False`` to reproduce it).
* ``alpha`` defaults to 0.4, the value of the official NYUv2 scripts (LibMTL uses 0.5).
* The inner problem is solved in float64 on the Gram matrix scaled by its largest entry, by SLSQP
  with the analytic gradient and tight tolerances (ftol 1e-12; the official code and LibMTL use
  SciPy's defaults, 1e-6); the better of that solution and the best vertex/centre is kept, so a
  solver hiccup cannot return a worse point. No 1e-8 fudge terms are added to norms.
* When ‖Gw‖ vanishes relative to ‖g_0‖ (0 lies in the convex hull of the gradients) the direction
  Gw/‖Gw‖ is undefined; the update is then g_0 (still feasible). An all-zero G gives zero.
* The result is ``aᵀG`` with effective per-task weights a = (𝟙/T + (c/‖Gw‖)·w)·rescale·(T), logged
  as ``weight/<task>``; the solver's simplex weights are logged as ``simplex/<task>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.registry import register_method

from .gradient_combination import GradientCombination

RESCALE_MODES = (0, 1, 2)


@dataclass(frozen=True)
class CAGradParams:
    """CAGrad hyper-parameters: ball radius α, rescale mode, and the ×T (sum-scale) convention."""

    alpha: float = 0.4
    rescale: int = 1
    scale_by_tasks: bool = True


def _scaled_gram(grads: Tensor) -> Tensor:
    peak = grads.detach().abs().max() if grads.numel() else grads.new_zeros(())
    g = grads.detach() / peak if peak > 0 else grads.detach()
    g = g.double()
    return g @ g.T


def cagrad_simplex_weights(gram: Tensor, alpha: float) -> Tensor:
    """The minimiser w ∈ Δ_T of wᵀM𝟙/T + α·√mean(M)·√(wᵀMw) for the Gram matrix M (float64, CPU)."""
    import numpy as np
    from scipy.optimize import minimize

    m = gram.detach().to("cpu", torch.float64).numpy()
    n = m.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    b = m.mean(axis=1)  # M𝟙/T
    c = alpha * math.sqrt(max(float(m.mean()), 0.0))

    def objective(w: np.ndarray) -> float:
        return float(w @ b + c * math.sqrt(max(float(w @ m @ w), 0.0)))

    def gradient(w: np.ndarray) -> np.ndarray:
        norm = math.sqrt(max(float(w @ m @ w), 0.0))
        return b + (c / norm) * (m @ w) if norm > 0 else b

    start = np.full(n, 1.0 / n)
    candidates = [start, *np.eye(n)]
    try:
        res = minimize(
            objective,
            start,
            jac=gradient,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * n,
            constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
            options={"ftol": 1e-12, "maxiter": 500},
        )
        w = np.clip(res.x, 0.0, None)
        if w.sum() > 0 and np.isfinite(w).all():
            candidates.insert(0, w / w.sum())
    except ValueError:  # SLSQP rejects degenerate input (e.g. NaN); fall back to the candidates
        pass
    best = min(candidates, key=objective)
    return torch.from_numpy(np.asarray(best, dtype=np.float64))


def cagrad_weights(
    gram: Tensor, alpha: float = 0.4, rescale: int = 1, scale_by_tasks: bool = True
) -> tuple[Tensor, Tensor]:
    """Effective per-task weights a (result = aᵀG) and the simplex weights w, from the Gram matrix.

    a = (𝟙/T + (c/‖Gw‖)·w) / rescale_factor · (T if ``scale_by_tasks``). Scale-free: multiplying
    G by s > 0 leaves a unchanged.
    """
    m = gram.detach().to("cpu", torch.float64)
    n = m.shape[0]
    peak = m.diagonal().max() if n else m.new_zeros(())
    if peak > 0:
        m = m / peak
    w = cagrad_simplex_weights(m, alpha)
    g0_norm = math.sqrt(max(float(m.mean()), 0.0))
    gw_norm = math.sqrt(max(float(w @ m @ w), 0.0))
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if gw_norm > 1e-12 * max(g0_norm, 1e-300) and g0_norm > 0:
        a = a + (alpha * g0_norm / gw_norm) * w
    if rescale == 1:
        a = a / (1.0 + alpha**2)
    elif rescale == 2:
        a = a / (1.0 + alpha)
    elif rescale != 0:
        raise ValueError(f"Parameter `rescale` should be one of 0, 1, 2. Found `rescale = {rescale!r}`.")
    if scale_by_tasks:
        a = a * n
    return a.to(gram.device), w.to(gram.device)


def cagrad_combine(
    grads: Tensor, alpha: float = 0.4, rescale: int = 1, scale_by_tasks: bool = True
) -> Tensor:
    """The CAGrad update for the T×P matrix ``grads`` (see the module docstring)."""
    a, _ = cagrad_weights(_scaled_gram(grads), alpha, rescale, scale_by_tasks)
    return a.to(grads.device, grads.dtype) @ grads


@register_method("cagrad")
class CAGrad(GradientCombination):
    """CAGrad (Liu 2021): maximise the worst task's improvement within a ball around the mean gradient."""

    Params = CAGradParams

    def validate(self) -> None:
        p = self.params
        if isinstance(p.alpha, bool) or not isinstance(p.alpha, (int, float)) or not 0 <= p.alpha < math.inf:
            raise ValueError(
                f"Parameter `alpha` should be a finite number >= 0. Found `alpha = {p.alpha!r}`."
            )
        if isinstance(p.rescale, bool) or p.rescale not in RESCALE_MODES:
            raise ValueError(
                f"Parameter `rescale` should be one of 0, 1, 2. Found `rescale = {p.rescale!r}`."
            )
        if not isinstance(p.scale_by_tasks, bool):
            raise ValueError(
                f"Parameter `scale_by_tasks` should be a bool. Found `scale_by_tasks = {p.scale_by_tasks!r}`."
            )
        if len(self.task_names) < 1:
            raise ValueError(f"CAGrad needs at least one task, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The ball radius α (the paper sweeps 0.1 … 0.9)."""
        return {"alpha": trial.suggest_float("alpha", 0.1, 0.9)}

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        a, w = cagrad_weights(_scaled_gram(grads), p.alpha, p.rescale, p.scale_by_tasks)
        logs = {f"weight/{t}": float(v) for t, v in zip(self.task_names, a.tolist())}
        logs.update({f"simplex/{t}": float(v) for t, v in zip(self.task_names, w.tolist())})
        return a.to(grads.device, grads.dtype) @ grads, logs
