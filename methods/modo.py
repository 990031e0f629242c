"""MoDo — multi-objective gradient with double sampling (Chen et al., NeurIPS 2023 / JMLR 2024).

One projected gradient step on the simplex weights per training step, then the weighted update::

    λ ← Π_Δ(λ − γ (G Gᵀ λ + ρ λ))          (λ = 𝟙/T at the start)
    d = Gᵀ λ

Reference code read: LibMTL (GitHub main) ``LibMTL/weighting/MoDo.py`` (modified from the
official ``heshandevaka/Trade-Off-MOL``) and torchjd 0.18 ``aggregation/_modo.py``. Parity is
tested against torchjd's ``MoDoWeighting`` over several steps.

Conventions pinned here:

* **Single batch.** The paper uses independent mini-batches (``G₁ G₂ᵀ`` for the λ step and a third
  batch for d; LibMTL takes a ``[3, T]`` loss tensor). The trainer gives one batch, so
  G₁ = G₂ = G₃ = G: the double-sampling (stochastic) part is absent and no random numbers are
  drawn. LibMTL divides the heads' accumulated gradient by 3, i.e. the heads get one batch's
  gradient of Σ L_t — ``heads = "unweighted"`` (default, Σ λ_t L_t); ``weighted`` gives Σ λ_t·λ^MoDo_t L_t.
* γ = 1e-3 and ρ = 0.1 as LibMTL (torchjd's defaults are 0.1 and 0.1). γ multiplies the raw Gram
  matrix, so the λ step is not scale-free (as in the paper): with large gradients choose a
  smaller γ. d is a convex combination (mean-like), not a sum.
* λ is a float64 buffer, checkpointed with the run; ``weight/<task>`` logs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting
from mtlbench.methods.moco import project_to_simplex


@dataclass(frozen=True)
class MoDoParams:
    """MoDo hyper-parameters: step size γ > 0 of the weights and their ℓ2 regulariser ρ >= 0."""

    gamma: float = 1e-3
    rho: float = 0.1
    heads: HeadWeighting = "unweighted"


def modo_weights(gram: Tensor, weights: Tensor, gamma: float, rho: float) -> Tensor:
    """``Π_Δ(λ − γ (G Gᵀ λ + ρ λ))`` in float64."""
    m = gram.detach().to(torch.float64)
    lam = weights.detach().to(m)
    return project_to_simplex(lam - gamma * (m @ lam + rho * lam))


@register_method("modo")
class MoDo(GramianWeighting):
    """MoDo (Chen 2023), single batch: one projected step on simplex weights per step, update Gᵀλ."""

    Params = MoDoParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("task_weights", torch.full((t,), 1.0 / t, dtype=torch.float64))

    def validate(self) -> None:
        check_param("gamma", self.params.gamma, low=0.0, low_open=True)
        check_param("rho", self.params.rho, low=0.0)
        check_param("heads", self.params.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("MoDo", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """γ log-uniform in [1e-4, 1e-1], ρ in [0, 1] (LibMTL's defaults 1e-3 and 0.1 inside)."""
        return {
            "gamma": trial.suggest_float("gamma", 1e-4, 1e-1, log=True),
            "rho": trial.suggest_float("rho", 0.0, 1.0),
        }

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        lam = modo_weights(gram, self.task_weights, float(self.params.gamma), float(self.params.rho))
        self.task_weights.copy_(lam)
        return lam, {}
