"""GradVac — Gradient Vaccine: raise each pair's cosine to an EMA target (Wang et al., ICLR 2021).

For every task i, starting from g_i' = g_i and visiting the other tasks j in a random order, with
φ = cos(g_i', g_j) and the target φ̂_ij::

    if φ < φ̂_ij:   g_i' ← g_i' + ‖g_i'‖ (φ̂ √(1−φ²) − φ √(1−φ̂²)) / (‖g_j‖ √(1−φ̂²)) · g_j
    φ̂_ij ← (1−β) φ̂_ij + β φ                    (every visit, φ taken before the correction)

The update is the **sum** Σ_i g_i'. Targets start at 0, so the first step is PCGrad.

Reference code read: torchjd 0.18 ``aggregation/_gradvac.py``; LibMTL 1.1.5
``weighting/GradVac.py``. Parity is tested against torchjd (several steps, 2 and 3 tasks) and
against LibMTL on the first step.

Conventions pinned here:

* **EMA on every visit** (the paper's rule, as torchjd implements it). LibMTL 1.1.5 updates φ̂ only for the
  pairs it corrects, so its targets never rise above a value that triggered a correction — a
  deviation from the paper; it agrees with us on the first step only (tested).
* **Exact cosines.** torchjd and LibMTL add ``eps = 1e-8`` to the denominators, which is not
  scale-free (at gradient norms 1e-5 every cosine becomes ≈ 0). Here a zero-norm row counts as
  φ = 0 and is never corrected against; the parity test runs torchjd with ``eps = 0``.
* The projections are done on the T×T Gram matrix (coefficients of the original rows), logged as
  ``weight/<task>``. Targets φ̂ are a T×T float64 buffer, checkpointed with the run.
* The random order comes from a CPU ``torch.Generator`` seeded from ``(seed, step)`` — one
  ``randperm`` of the other tasks per i, as torchjd draws them — never the global RNG; a resumed
  run replays the same orders. Heads (``heads``): ``unweighted`` (default; LibMTL, torchjd)
  back-propagate Σ λ_t L_t, ``weighted`` Σ w_t λ_t L_t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting


@dataclass(frozen=True)
class GradVacParams:
    """GradVac hyper-parameters: EMA rate β of the cosine targets and the seed of the visiting order."""

    beta: float = 0.5
    seed: int = 0
    heads: HeadWeighting = "unweighted"


def gradvac_weights(
    gram: Tensor, targets: Tensor, beta: float, generator: torch.Generator | None = None
) -> Tensor:
    """Weights w with ``wᵀG = Σ_i g_i'``; updates ``targets`` (T×T, float64) in place."""
    m = gram.detach().to("cpu", torch.float64)
    t = m.shape[0]
    phi_hat_all = targets.detach().to("cpu", torch.float64).clone()
    coef = torch.eye(t, dtype=torch.float64)
    norms_j = m.diagonal().clamp(min=0.0).sqrt()
    for i in range(t):
        others = [j for j in range(t) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist()
        for j in (others[k] for k in order):
            dots = coef[i] @ m
            norm_i = float((dots @ coef[i]).clamp(min=0.0).sqrt())
            norm_j = float(norms_j[j])
            phi = float(dots[j]) / (norm_i * norm_j) if norm_i > 0 and norm_j > 0 else 0.0
            phi = max(-1.0, min(1.0, phi))
            phi_hat = float(phi_hat_all[i, j])
            root_hat = math.sqrt(max(0.0, 1.0 - phi_hat * phi_hat))
            if phi < phi_hat and norm_j > 0 and root_hat > 0:
                root = math.sqrt(max(0.0, 1.0 - phi * phi))
                coef[i, j] += norm_i * (phi_hat * root - phi * root_hat) / (norm_j * root_hat)
            phi_hat_all[i, j] = (1.0 - beta) * phi_hat + beta * phi
    targets.copy_(phi_hat_all.to(targets.device, targets.dtype))
    return coef.sum(dim=0).to(gram.device, gram.dtype)


@register_method("gradvac")
class GradVac(GramianWeighting):
    """GradVac (Wang 2021): correct each task gradient until its cosines reach EMA targets, then sum."""

    Params = GradVacParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("targets", torch.zeros(t, t, dtype=torch.float64))

    def validate(self) -> None:
        check_param("beta", self.params.beta, low=0.0, high=1.0)
        check_param("seed", self.params.seed, "int", low=0)
        check_param("heads", self.params.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("GradVac", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The EMA rate β, log-uniform in [1e-3, 1] (LibMTL's default 0.5 is inside)."""
        return {"beta": trial.suggest_float("beta", 1e-3, 1.0, log=True)}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        generator = ctx.generator(self.params.seed)
        return gradvac_weights(gram, self.targets, float(self.params.beta), generator), {}
