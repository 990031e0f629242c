"""CAGrad — conflict-averse gradient descent (Liu et al., NeurIPS 2021).

With M = GGᵀ, g_0 = mean_t g_t (so ‖g_0‖ = √mean(M)) and c = α·‖g_0‖, solve over the simplex::

    w = argmin_{w ∈ Δ_T}  F(w) = wᵀM𝟙/T + c·√(wᵀMw)

and update with ``d = g_0 + (c / ‖Gw‖)·Gw``, the maximiser of min_t ⟨g_t, d⟩ over the ball
‖d − g_0‖ ≤ c. Then ``rescale``: 0 → d, 1 → d/(1+α²) (the paper's scripts), 2 → d/(1+α).

Solver. On a support S the KKT conditions b_S + κ M_SS w_S = μ𝟙 (b = M𝟙/T, κ = c/‖Gw‖) with
𝟙ᵀw = 1 and ‖Gw‖ = c/κ have the closed form w_S = (μx − y)/κ, x = M_SS⁻¹𝟙, y = M_SS⁻¹b_S,
κ² = (𝟙ᵀy)² − 𝟙ᵀx·(b_Sᵀy − c²), μ = (𝟙ᵀy + κ)/𝟙ᵀx. Supports are tried smallest first (solved on
the cosine matrix, :mod:`mtlbench.api.simplex`) and accepted when every task's
⟨g_t, d⟩ >= F(w) holds to 1e-9 relative to ‖g_t‖·‖d‖ — the certificate that d maximises the worst
task's improvement (SLSQP with an absolute ``ftol``, as in the official code and LibMTL, stops
early where F is ~1e-7). A primal active-set method proposes the support; up to 12 tasks every
support is tried if it fails, beyond that only its neighbours (a heuristic: on 54 adversarial
cases with T = 14, 20, 40 and α = 0.2, 0.4, 0.8 it missed 6, all with T ≥ 20 and α ≤ 0.4).
A support that fails is counted in ``cagrad/fallbacks`` and logged; the best candidate is used.

Conventions pinned here (official code: Cranial-XIX/CAGrad, ``nyuv2/utils.py`` ``cagrad``):

* ``scale_by_tasks`` (default True, the official code multiplies by T "to match the sum loss");
  LibMTL does not (``scale_by_tasks=False``). ``alpha`` defaults to 0.4 (official NYUv2 scripts;
  LibMTL uses 0.5), ``rescale`` to 1. Heads receive the gradient of Σ λ_t L_t (official code).
* Zero task gradients do not constrain d (their inner product is 0 whatever d is): the problem is
  solved over the other tasks, with g_0 and c of all tasks. When 0 lies in the convex hull of the
  others and F >= 0 (``cagrad/stationary`` = 1) the direction Gw/‖Gw‖ is undefined; the update is
  then g_0. An all-zero G gives zero.
* The result is ``aᵀG`` with a = (𝟙/T + (c/‖Gw‖)·w)·rescale·(T), logged as ``weight/<task>``;
  the simplex weights are logged as ``simplex/<task>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.gradients import StepContext, combine_rows, gram_matrix
from mtlbench.api.simplex import (
    SimplexSolution,
    active_set_support,
    inverse_on_support,
    kkt_residual,
    min_norm_point,
    solve_by_supports,
)
from mtlbench.api.weighting import GramianWeighting, normalised_gram, weight_logs
from mtlbench.registry import register_method

RESCALE_MODES = (0, 1, 2)


@dataclass(frozen=True)
class CAGradParams:
    """CAGrad hyper-parameters: ball radius α, rescale mode, and the ×T (sum-scale) convention."""

    alpha: float = 0.4
    rescale: int = 1
    scale_by_tasks: bool = True


def cagrad_solution(gram: Tensor, alpha: float) -> tuple[SimplexSolution, bool]:
    """The certified minimiser w ∈ Δ_T of F, and whether the optimum is stationary (Gw = 0)."""
    m = gram.detach().to("cpu", torch.float64)
    t = m.shape[0]
    c_mat, n, nonzero = normalised_gram(m)
    b = m.mean(dim=1)
    c = alpha * math.sqrt(max(float(m.mean()), 0.0))
    live = torch.nonzero(nonzero).flatten()
    if t == 1 or c == 0.0 or live.numel() == 0:
        return SimplexSolution(torch.full((t,), 1.0 / t, dtype=torch.float64), 0.0, False), False
    scale = math.sqrt(max(float(m.mean()), 0.0)) + c  # ≥ ‖d‖

    def affine(support: list[int] | tuple[int, ...]) -> Tensor | None:
        """The minimiser of F over the affine hull of the support (closed form; may be negative)."""
        idx = list(support)
        if not bool(nonzero[idx].all()):
            return None
        x = inverse_on_support(c_mat, n, idx, torch.ones(len(idx), dtype=torch.float64))
        y = inverse_on_support(c_mat, n, idx, b[idx])
        if x is None or y is None:
            return None
        sx, sy = float(x.sum()), float(y.sum())
        disc = sy * sy - sx * (float(b[idx] @ y) - c * c)
        if not disc > 0:
            return None
        kappa = math.sqrt(disc)
        w = torch.zeros(t, dtype=torch.float64)
        w[idx] = ((sy + kappa) / sx * x - y) / kappa
        return w / w.sum()

    def objective(w: Tensor) -> float:
        return float(w @ b) + c * math.sqrt(max(float(w @ m @ w), 0.0))

    def violation(w: Tensor) -> Tensor:
        beta = n * w
        q = math.sqrt(max(float(beta @ (c_mat @ beta)), 0.0))
        proj = (c_mat @ n) / t + ((c / q) * (c_mat @ beta) if q > 0 else 0.0)
        out = (float(beta @ proj) / n - proj) / scale
        return torch.where(nonzero, out, torch.zeros_like(out))

    start = int(torch.argmin(torch.where(nonzero, b + c * n, torch.full_like(b, math.inf))))
    proposal = active_set_support(start, affine, objective, violation, t)
    sol = solve_by_supports(t, affine, lambda w: kkt_residual(w, violation(w)), (proposal,))
    if sol.fallback:
        hull = min_norm_point(m[live][:, live])
        beta = n[live] * hull.weights
        if float(beta @ (c_mat[live][:, live] @ beta)) <= (1e-9 * float(beta.sum())) ** 2:
            w = torch.zeros(t, dtype=torch.float64)
            w[live] = hull.weights
            return SimplexSolution(w, 0.0, False), True
    return sol, False


def cagrad_simplex_weights(gram: Tensor, alpha: float) -> Tensor:
    """The minimiser w ∈ Δ_T of F for the Gram matrix M (float64, CPU)."""
    return cagrad_solution(gram, alpha)[0].weights


def cagrad_weights(
    gram: Tensor, alpha: float = 0.4, rescale: int = 1, scale_by_tasks: bool = True
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Effective per-task weights a (result = aᵀG), the simplex weights w, and the solver's logs.

    a = (𝟙/T + (c/‖Gw‖)·w) / rescale_factor · (T if ``scale_by_tasks``); scale-free.
    """
    if rescale not in RESCALE_MODES:
        raise ValueError(f"Parameter `rescale` should be one of 0, 1, 2. Found `rescale = {rescale!r}`.")
    m = gram.detach().to("cpu", torch.float64)
    n = m.shape[0]
    sol, stationary = cagrad_solution(m, alpha)
    w = sol.weights
    gw = math.sqrt(max(float(w @ m @ w), 0.0))
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if not stationary and gw > 0:
        a = a + (alpha * math.sqrt(max(float(m.mean()), 0.0)) / gw) * w
    a = a / (1.0, 1.0 + alpha**2, 1.0 + alpha)[rescale] * (n if scale_by_tasks else 1)
    logs = {"cagrad/kkt_residual": sol.residual, "cagrad/stationary": float(stationary)}
    return a.to(gram.device), w.to(gram.device), {**logs, "cagrad/fallback": float(sol.fallback)}


def cagrad_combine(
    grads: Tensor, alpha: float = 0.4, rescale: int = 1, scale_by_tasks: bool = True
) -> Tensor:
    """The CAGrad update for the T×P matrix ``grads`` (see the module docstring)."""
    return combine_rows(cagrad_weights(gram_matrix(grads), alpha, rescale, scale_by_tasks)[0], grads)


@register_method("cagrad")
class CAGrad(GramianWeighting):
    """CAGrad (Liu 2021): maximise the worst task's improvement within a ball around the mean gradient."""

    Params = CAGradParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        self.register_buffer("fallbacks", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        check_param("alpha", self.params.alpha, low=0)
        check_param("rescale", self.params.rescale, "choice", choices=RESCALE_MODES)
        check_param("scale_by_tasks", self.params.scale_by_tasks, "bool")
        check_tasks("CAGrad", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The ball radius α (the paper sweeps 0.1 … 0.9)."""
        return {"alpha": trial.suggest_float("alpha", 0.1, 0.9)}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        a, w, logs = cagrad_weights(gram, p.alpha, p.rescale, p.scale_by_tasks)
        self.fallbacks += int(logs["cagrad/fallback"])
        logs["cagrad/fallbacks"] = float(self.fallbacks)
        return a, {**logs, **weight_logs(self.task_names, w, "simplex")}
