"""MoCo — multi-objective gradient correction with tracked gradients (Fernando et al., ICLR 2023).

Each step k (counted from 1), with ĝ_t the shared gradient of λ_t·L_t::

    h_t = ĝ_t / ‖ĝ_t‖ · λ_t L_t                    (normalised gradient scaled by the loss)
    y_t ← y_t − β_k (y_t − h_t),                    β_k = β / k^{σ_β}        (y = 0 at start)
    λ   ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ),              γ_k = γ / k^{σ_γ}        (λ = 𝟙/T at start)
    d   = Yᵀ λ

Π_Δ is the Euclidean projection onto the probability simplex (the paper's λ update).

Reference code read: LibMTL (GitHub main) ``LibMTL/weighting/MoCo.py`` ("based on the authors'
sharing code"; LibMTL 1.1.5 has no MoCo) and the paper. No installed library has MoCo; the tests
check two steps against golden values computed independently (a direct NumPy evaluation of the
recursion and a sort-free simplex projection).

Conventions pinned here:

* **Simplex projection (paper) by default.** LibMTL replaces Π_Δ by a softmax of the same
  argument — a different map (it never reaches the simplex's boundary and is not a projection).
  ``weight_update = "softmax"`` reproduces LibMTL's rule and is tested as such.
* The normalisation h_t = ĝ_t/‖ĝ_t‖·L_t is LibMTL's (the authors' code); a zero gradient gives
  h_t = 0 (LibMTL adds 1e-8 to the norm). With configured weights the loss factor is λ_t·L_t (the
  step context's losses); a pure ``combine`` call, which has no losses, uses L_t = 1.
* d is a convex combination (weights on the simplex, like MGDA), not a sum over tasks.
* Y (T×P, on the model's device, sized at the first step), λ and k are buffers, checkpointed.
  Heads get the ordinary gradient of Σ λ_t L_t (LibMTL's heads get Σ L_t: the same with λ = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlbench.api import GradientCombination, StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import weight_logs

WeightUpdate = Literal["projection", "softmax"]


@dataclass(frozen=True)
class MoCoParams:
    """MoCo hyper-parameters (LibMTL's defaults): rates β, γ with decay exponents, ridge ρ, λ update."""

    beta: float = 0.5
    beta_sigma: float = 0.5
    gamma: float = 0.1
    gamma_sigma: float = 0.5
    rho: float = 0.0
    weight_update: WeightUpdate = "projection"


def project_to_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection of ``v`` onto ``{x >= 0, Σ x = 1}`` (sort-based, exact)."""
    v = v - v.max()  # the projection ignores shifts along 𝟙; this keeps huge inputs exact
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, dim=0) - 1.0
    idx = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / idx > 0).max())  # index 0 always qualifies (u_1 = 0)
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp(min=0.0)


def normalised_by_loss(grads: Tensor, losses: Tensor) -> Tensor:
    """``g_t / ‖g_t‖ · L_t`` (0 for a zero row)."""
    norms = grads.norm(dim=1, keepdim=True)
    ok = norms > 0
    return torch.where(ok, grads / torch.where(ok, norms, 1.0), 0.0) * losses[:, None]


def moco_step(
    tracked: Tensor,
    weights: Tensor,
    grads: Tensor,
    losses: Tensor,
    step: int,
    params: MoCoParams,
) -> tuple[Tensor, Tensor, Tensor]:
    """One MoCo step (k = ``step`` >= 1): returns the new Y, the new λ and the update d = Yᵀλ."""
    beta_k = params.beta / step**params.beta_sigma
    gamma_k = params.gamma / step**params.gamma_sigma
    y = tracked - beta_k * (tracked - normalised_by_loss(grads, losses))
    t = y.shape[0]
    ridge = params.rho * torch.eye(t, dtype=y.dtype, device=y.device)
    target = weights - gamma_k * (y @ y.T + ridge) @ weights
    new_weights = (
        torch.softmax(target, dim=0) if params.weight_update == "softmax" else project_to_simplex(target)
    )
    return y, new_weights, y.T @ new_weights


@register_method("moco")
class MoCo(GradientCombination):
    """MoCo (Fernando 2023): tracked normalised task gradients, simplex weights by projected descent."""

    Params = MoCoParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer("task_weights", torch.full((t,), 1.0 / t))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        p = self.params
        check_param("beta", p.beta, low=0.0, high=1.0, low_open=True)
        check_param("gamma", p.gamma, low=0.0, low_open=True)
        check_param("beta_sigma", p.beta_sigma, low=0.0)
        check_param("gamma_sigma", p.gamma_sigma, low=0.0)
        check_param("rho", p.rho, low=0.0)
        check_param("weight_update", p.weight_update, "choice", choices=("projection", "softmax"))
        check_tasks("MoCo", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """β in [0.05, 1], γ log-uniform in [1e-3, 1], ρ in [0, 1] (LibMTL's defaults inside)."""
        return {
            "beta": trial.suggest_float("beta", 0.05, 1.0),
            "gamma": trial.suggest_float("gamma", 1e-3, 1.0, log=True),
            "rho": trial.suggest_float("rho", 0.0, 1.0),
        }

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "tracked"
        if key in state_dict:  # sized at the first step: take the checkpoint's shape
            self.tracked = torch.empty_like(state_dict[key], device=self.tracked.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def aggregate(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        if self.tracked.shape != grads.shape:
            self.tracked = torch.zeros_like(grads)
        self.steps += 1
        t = len(self.task_names)
        losses = torch.ones(t) if ctx.losses is None else ctx.losses
        y, weights, update = moco_step(
            self.tracked, self.task_weights.to(grads), grads, losses.to(grads), int(self.steps), self.params
        )
        self.tracked.copy_(y)
        self.task_weights.copy_(weights)
        return update, weight_logs(self.task_names, weights)
