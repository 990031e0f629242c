"""FairGrad — α-fair resource allocation between tasks (Ban & Ji, ICML 2024, Eq. 4 / Algorithm 1).

The task weights w > 0 solve ``(G Gᵀ) w = w^{−1/α}`` (element-wise power) and the shared update is
``d = Gᵀ w = Σ_t w_t g_t``. α = 1 is proportional fairness (the Nash-MTL condition), α → ∞
approaches max-min fairness, α → 0 plain summation.

Reference code read: torchjd 0.18 ``aggregation/_fairgrad.py`` (adapted from the official
``OptMN-Lab/fairgrad`` code) and LibMTL (GitHub main) ``LibMTL/weighting/FairGrad.py``; both solve
the equation with ``scipy.optimize.least_squares`` from 𝟙/T. The parity test compares with torchjd.

Conventions pinned here:

* **Exact solve.** The equation is the optimality condition of the strictly convex problem
  ``min_{w>0} ½ wᵀ M w − Σ_t h(w_t)`` with ``h'(w) = w^{−1/α}``; it is solved by damped Newton steps
  (fraction-to-the-boundary, Armijo backtracking) on the normalised ``M̃ = M/c`` (c = mean diagonal)
  from the orthogonal-gradient solution ``w_t = M̃_tt^{−α/(1+α)}``, until every component's residual
  is below 1e-10 of ``w_t^{−1/α}`` (plus the round-off of ``M̃w``), then rescaled
  (``w = w̃ · c^{−α/(1+α)}``). ``least_squares`` stops at ``ftol = 1e-8``; the parity test allows 1e-5
  relative (measured: at most 2.5e-8 on its 36 matrix × α cases).
* **Degenerate inputs.** A task with a zero gradient has no finite weight (``w_t^{−1/α} = 0``); it
  gets weight 0 and the others are solved without it. When a positive combination of the gradients
  vanishes (e.g. g and −g) the equation has no solution (the weights diverge); only then, after
  100 Newton steps without convergence, the solve is repeated with a ridge ``1e-10·min(diag M̃)``
  on M̃, which keeps the weights finite. Such a fallback is logged as ``fairgrad/unconverged = 1``.
* **Heads** (``heads``): ``weighted`` (default) back-propagates Σ w_t λ_t L_t through the heads, as
  the official code and LibMTL do (``torch.sum(w * losses).backward()``); ``unweighted`` gives them
  Σ λ_t L_t (torchjd's ``mtl_backward``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting

RIDGE = 1e-10
TOLERANCE = 1e-10
ROUNDOFF = 64 * torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class FairGradParams:
    """FairGrad hyper-parameters: the fairness parameter α > 0 (LibMTL's default 1.0), heads' loss."""

    alpha: float = 1.0
    heads: HeadWeighting = "weighted"


def _solve(m: Tensor, alpha: float, max_iter: int = 100) -> tuple[Tensor, bool]:
    """w > 0 with ``m w = w^{−1/α}`` (float64, m with a positive diagonal); converged?

    Starts from the exact solution for orthogonal gradients, ``w_t = m_tt^{−α/(1+α)}``, so that tasks
    whose gradient norms differ by orders of magnitude start at the right scale.
    """
    power = -1.0 / alpha

    def potential(w: Tensor) -> float:
        h = torch.log(w) if alpha == 1.0 else w ** (1.0 + power) / (1.0 + power)
        return float(0.5 * w @ m @ w - h.sum())

    def converged(w: Tensor) -> bool:
        # relative to w^{−1/α}, plus the round-off of the product M w itself
        slack = TOLERANCE * w**power + ROUNDOFF * (m.abs() @ w)
        return bool(((m @ w - w**power).abs() <= slack).all())

    w = m.diagonal() ** (-alpha / (1.0 + alpha))
    for _ in range(max_iter):
        if converged(w):
            return w, True
        grad = m @ w - w**power
        hessian = m + torch.diag(-power * w ** (power - 1.0))
        try:
            step = -torch.linalg.solve(hessian, grad)
        except RuntimeError:  # numerically singular Hessian: the weights are running away
            return w, False
        neg = step < 0
        size = 1.0
        if bool(neg.any()):
            size = min(1.0, 0.99 * float((-w[neg] / step[neg]).min()))
        base, slope = potential(w), float(grad @ step)
        noise = 1e-12 * abs(base)
        while size > 1e-12 and potential(w + size * step) > base + 1e-4 * size * slope + noise:
            size *= 0.5
        w = w + size * step
    return w, converged(w)


def fairgrad_weights(gram: Tensor, alpha: float) -> tuple[Tensor, bool]:
    """FairGrad's task weights for the T×T Gram matrix, and whether the exact solve converged."""
    m = gram.detach().to("cpu", torch.float64)
    t = m.shape[0]
    weights = torch.zeros(t, dtype=torch.float64)
    live = m.diagonal() > 0
    if not bool(live.any()):
        return weights.to(gram.device, gram.dtype), True
    sub = m[live][:, live]
    scale = float(sub.diagonal().mean())
    normalised = sub / scale
    w, converged = _solve(normalised, alpha)
    if not converged:  # singular with a positive null vector: no solution; a tiny ridge makes one
        ridge = RIDGE * torch.eye(sub.shape[0], dtype=torch.float64) * normalised.diagonal().min()
        w, _ = _solve(normalised + ridge, alpha, max_iter=200)
    weights[live] = w * scale ** (-alpha / (1.0 + alpha))
    return weights.to(gram.device, gram.dtype), converged


def fairgrad_combine(grads: Tensor, alpha: float = 1.0) -> Tensor:
    """The FairGrad update for the T×P matrix ``grads``."""
    return fairgrad_weights(grads @ grads.T, alpha)[0] @ grads


@register_method("fairgrad")
class FairGrad(GramianWeighting):
    """FairGrad (Ban 2024): task weights of the α-fair allocation, (G Gᵀ) w = w^(−1/α)."""

    Params = FairGradParams

    def validate(self) -> None:
        check_param("alpha", self.params.alpha, low=0.0, low_open=True)
        check_param("heads", self.params.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("FairGrad", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """α log-uniform in [0.1, 10] (the paper reports α in {0.5, 1, 2, 5, 10})."""
        return {"alpha": trial.suggest_float("alpha", 0.1, 10.0, log=True)}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        weights, converged = fairgrad_weights(gram, float(self.params.alpha))
        return weights, {"fairgrad/unconverged": 0.0 if converged else 1.0}
