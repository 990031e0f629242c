"""ConFIG — the conflict-free direction with equal cosine to every task gradient (registered as ``config``).

Liu, Chu, Thuerey, *ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks*
(arXiv:2408.11104), Eq. 2. With unit rows ``ĝ_t = g_t/‖g_t‖`` stacked in Û::

    d̂ = Û⁺ 𝟙 / ‖Û⁺ 𝟙‖,        d = (Σ_t g_t · d̂) · d̂

so ``ĝ_t · d̂`` is the same for every task (when Û has full row rank) and positive: the update
conflicts with no task. Its length is the **sum** of the task gradients' projections on d̂.

Reference code read: torchjd 0.18 ``aggregation/_config.py`` (adapted from the official
``conflictfree`` package); LibMTL has no ConFIG. The parity test compares against torchjd 0.18.

Conventions pinned here:

* The pseudo-inverse is taken through the T×T Gram matrix: ``Û⁺𝟙 = Ûᵀ (ÛÛᵀ)⁺ 𝟙`` with
  ``ÛÛᵀ = D⁻¹ G Gᵀ D⁻¹`` (D = diag ‖g_t‖), so no P×T pseudo-inverse is formed and G is never
  copied. The cut-off for small eigenvalues of ÛÛᵀ is ``T·eps·λ_max`` (torchjd's ``pinv`` of Û
  cuts singular values at ``max(T, P)·eps·σ_max``); the two agree except on numerically singular
  inputs, where any least-squares solution is as good.
* A zero row has ĝ_t = 0 (as in torchjd) and does not enter the direction; an all-zero G gives 0.
* Default preference vector 𝟙 (torchjd's and the official default). Heads (``heads``):
  ``unweighted`` (default, torchjd) back-propagates Σ λ_t L_t, ``weighted`` Σ w_t λ_t L_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting


@dataclass(frozen=True)
class ConFIGParams:
    """ConFIG hyper-parameters: only the heads' convention."""

    heads: HeadWeighting = "unweighted"


def config_weights(gram: Tensor) -> Tensor:
    """Weights w with ``d = wᵀG`` for the ConFIG update, from the T×T Gram matrix (float64 inside)."""
    m = gram.detach().to(torch.float64)
    t = m.shape[0]
    norms = m.diagonal().clamp(min=0.0).sqrt()
    inv = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), torch.zeros_like(norms))
    unit_gram = m * inv[:, None] * inv[None, :]
    coef = torch.linalg.pinv(unit_gram, hermitian=True, rtol=t * torch.finfo(m.dtype).eps)
    direction = (coef @ torch.ones(t, dtype=m.dtype, device=m.device)) * inv  # Û⁺𝟙 in the basis of G
    sq_norm = direction @ m @ direction
    if not sq_norm > 0:
        return torch.zeros(t, dtype=gram.dtype, device=gram.device)
    unit = direction / sq_norm.sqrt()
    length = (m @ unit).sum()
    return (length * unit).to(gram.dtype)


def config_combine(grads: Tensor) -> Tensor:
    """The ConFIG update for the T×P matrix ``grads``."""
    return config_weights(grads @ grads.T) @ grads


@register_method("config")
class ConFIG(GramianWeighting):
    """ConFIG (Liu 2024): update of equal cosine to every task gradient, length = sum of projections."""

    Params = ConFIGParams

    def validate(self) -> None:
        check_param("heads", self.params.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("ConFIG", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """ConFIG has no hyper-parameter to tune."""
        return {}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return config_weights(gram), {}
