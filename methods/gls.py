"""GLS — geometric loss strategy (Chennupati et al., CVPR Workshops 2019, MultiNet++).

Trains on the geometric mean of the task losses::

    L = Π_t L_t^{λ_t / Σ_k λ_k}                  (= (Π_t L_t)^{1/T} with equal weights)

whose gradient is ``L · Σ_t (λ_t/Σλ) ∇L_t / L_t``: each task is weighted by the inverse of its own
loss, so the method is invariant to rescaling any one loss.

Reference code read: LibMTL 1.1.5 ``weighting/GLS.py`` (parity tested through its ``backward``).

Conventions pinned here:

* The configured weights λ_t are the exponents of a weighted geometric mean (normalised to sum 1),
  so with the thyroid task's λ = (1, 0.5, 2) they change the balance rather than only the scale;
  with equal λ this is exactly LibMTL's ``(Π L_t)^{1/T}``.
* The product is formed as ``exp(Σ_t (λ_t/Σλ) log L_t)``, which neither underflows nor overflows
  with many tasks (LibMTL multiplies the losses directly). GLS needs positive losses: a loss
  <= 0 raises ``ValueError`` naming the task instead of producing NaN gradients.
* ``weight/<task>`` reports the effective weight ``∂L/∂L_t = (λ_t/Σλ)·L / L_t``; LibMTL returns
  ``L_t / (T·Π L)``, which is not the gradient's weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.api import MultiTaskMethod, StepInputs, check_tasks, detach_float, register_method


def gls_loss(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """The weighted geometric mean ``exp(Σ_t ŵ_t log L_t)``, ŵ = weights/Σ weights (uniform if None)."""
    if weights is None:
        weights = torch.ones_like(losses)
    exponents = weights / weights.sum()
    return torch.exp((exponents * torch.log(losses)).sum())


@register_method("gls")
class GLS(MultiTaskMethod):
    """Geometric loss strategy (Chennupati 2019): train on the geometric mean of the task losses."""

    def validate(self) -> None:
        check_tasks("GLS", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """GLS has no hyper-parameters."""
        return {}

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        losses = torch.stack([inputs.losses[t].float() for t in self.task_names])
        bad = [t for t, v in zip(self.task_names, losses.tolist()) if not v > 0]
        if bad:
            raise ValueError(f"GLS needs positive task losses; non-positive for {bad}: {losses.tolist()}")
        lam = torch.tensor([float(inputs.weights[t]) for t in self.task_names], device=losses.device)
        total = gls_loss(losses, lam)
        inputs.scale(total).backward()
        effective = (lam / lam.sum()) * total.detach() / losses.detach()
        logs = {"loss": detach_float(total)}
        logs.update({f"weight/{t}": float(w) for t, w in zip(self.task_names, effective.tolist())})
        return logs
