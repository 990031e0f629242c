"""PCGrad — projecting conflicting gradients (Yu et al., NeurIPS 2020, Algorithm 1).

For every task i, starting from g_i^PC = g_i and visiting the other tasks j in a random order::

    if g_i^PC · g_j < 0:   g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) · g_j

always projecting against the **original** g_j. The shared gradient is the **sum** Σ_i g_i^PC
(Algorithm 1; LibMTL and torchjd also sum, so no rescaling is involved).

Conventions pinned here:

* Every g_i^PC is a linear combination of the rows of G, so the projections are carried out on the
  T×T Gram matrix GGᵀ: the result is ``wᵀG`` with per-task weights w (logged as ``weight/<task>``;
  without conflicts w = 𝟙). This costs O(T³) instead of O(T²P) and never copies G.
* A task with a zero gradient (‖g_j‖ = 0) has g_i^PC · g_j = 0 and is never projected against.
* The random order comes from the step context's generator (seeded from ``(seed, step)``); the
  method therefore has no state to checkpoint and a resumed run replays the same orders. With
  two tasks the order does not matter and the result is deterministic.
* Heads receive the gradient of Σ λ_t L_t (each head its task's gradient), as in the official
  code (tianheyu927/PCGrad, ``PCGrad_tf.py``: only the shared variables are projected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.gradients import GradientCombination, StepContext, combine_rows, gram_matrix, step_generator
from mtlbench.api.weighting import weight_logs
from mtlbench.registry import register_method

__all__ = ["PCGrad", "PCGradParams", "pcgrad_combine", "pcgrad_weights", "step_generator"]


@dataclass(frozen=True)
class PCGradParams:
    """PCGrad hyper-parameters: ``seed`` for the random projection order (combined with the step)."""

    seed: int = 0


def pcgrad_weights(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Weights w with ``wᵀG = Σ_i g_i^PC`` for the T×T Gram matrix ``gram = GGᵀ`` (float64 inside).

    Row i of the coefficient matrix holds g_i^PC in the basis of the original gradients, so
    g_i^PC · g_j is that row times column j of the Gram matrix.
    """
    m = gram.detach().to("cpu", torch.float64)
    n = m.shape[0]
    weights = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        coef = torch.zeros(n, dtype=torch.float64)
        coef[i] = 1.0
        for j in torch.randperm(n, generator=generator).tolist():
            if j == i:
                continue
            inner = float(coef @ m[:, j])
            if inner < 0.0 and m[j, j] > 0:
                coef[j] -= inner / float(m[j, j])
        weights += coef
    return weights.to(gram.device, gram.dtype)


def pcgrad_combine(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Σ_i g_i^PC for the T×P matrix ``grads`` (the order of projections drawn from ``generator``)."""
    return combine_rows(pcgrad_weights(gram_matrix(grads), generator), grads)


@register_method("pcgrad")
class PCGrad(GradientCombination):
    """PCGrad (Yu 2020): project each task gradient off the conflicting others, then sum."""

    Params = PCGradParams

    def validate(self) -> None:
        check_param("seed", self.params.seed, "int", low=0)
        check_tasks("PCGrad", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """PCGrad has no hyper-parameter worth tuning (the seed is not one)."""
        return {}

    def aggregate(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        weights = pcgrad_weights(gram_matrix(grads), ctx.generator(self.params.seed))
        return combine_rows(weights, grads), weight_logs(self.task_names, weights)
