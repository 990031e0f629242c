"""IMTL-G — impartial multi-task learning, gradient part (Liu et al., ICLR 2021).

Find the update d = Σ_t α_t g_t with Σ_t α_t = 1 whose projections on every unit task gradient
u_t = g_t/‖g_t‖ are equal. The paper's closed form, with D = [g_1 − g_t]_{t≥2} and
U = [u_1 − u_t]_{t≥2}::

    α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹,   α_1 = 1 − Σ_{t≥2} α_t

Conventions pinned here (no official code is public; LibMTL ``weighting/IMTL.py`` and torchjd
``aggregation/_imtl_g.py`` are the references):

* Solved on the cosine matrix C = U Uᵀ: with β = diag(‖g‖) α, ⟨u_t, d⟩ equal for all t ⟺ Cβ ∝ 𝟙,
  so β = C⁺𝟙 and α = diag(‖g‖)⁻¹β / Σ(·). For full-rank G this is the closed form above and
  torchjd's α = M⁺n/𝟙ᵀM⁺n (tested). Unlike a pseudo-inverse of M = GGᵀ (whose small eigenvalues
  with norms 1e5 apart look like rank deficiency to any relative cut-off), C's conditioning does
  not depend on the norms: only eigenvalues of C below 1e-13·T·max are treated as zero.
* A zero gradient gets α_t = 0 and the others are balanced as if it were absent; when Σ of the
  unnormalised weights vanishes no direction is impartial and the update is zero.
* Σ α_t = 1: the update has the scale of one task gradient (like LibMTL and torchjd). LibMTL's
  ``IMTL`` is the hybrid IMTL-L+G; its gradient part at the initial loss scales (s = 0) is this
  method. Heads receive the gradient of Σ λ_t L_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_tasks
from mtlbench.api.gradients import StepContext, gram_matrix
from mtlbench.api.simplex import SINGULAR_RTOL
from mtlbench.api.weighting import GramianWeighting, normalised_gram
from mtlbench.registry import register_method


@dataclass(frozen=True)
class IMTLGParams:
    """IMTL-G has no hyper-parameters."""


def imtl_g_weights(gram: Tensor) -> Tensor:
    """α = D⁻¹C⁺𝟙 / Σ(D⁻¹C⁺𝟙) for the Gram matrix M = DCD (zeros when the sum vanishes)."""
    c, n, nonzero = normalised_gram(gram)
    alpha = torch.zeros(n.shape[0], dtype=torch.float64)
    if bool(nonzero.any()):
        lam, vec = torch.linalg.eigh(c[nonzero][:, nonzero])
        keep = lam > lam.max() * lam.numel() * SINGULAR_RTOL
        beta = vec[:, keep] @ (vec[:, keep].sum(0) / lam[keep])
        alpha[nonzero] = beta / n[nonzero]
        total = alpha.sum()
        alpha = alpha / total if total.abs() > 1e-12 * alpha.abs().sum() else torch.zeros_like(alpha)
    return alpha.to(gram.device, gram.dtype)


def imtl_g_combine(grads: Tensor) -> Tensor:
    """Σ_t α_t g_t with the IMTL-G weights of the T×P matrix ``grads``."""
    alpha = imtl_g_weights(gram_matrix(grads))
    return (alpha.to(grads.device) @ grads.double()).to(grads.dtype)


@register_method("imtl_g")
class IMTLG(GramianWeighting):
    """IMTL-G (Liu 2021): the convex-sum update with equal projections on every unit task gradient."""

    Params = IMTLGParams

    def validate(self) -> None:
        check_tasks("IMTL-G", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """IMTL-G has no hyper-parameters: an empty search space."""
        return {}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return imtl_g_weights(gram), {}
