"""IMTL-G — impartial multi-task learning, gradient part (Liu et al., ICLR 2021).

Find the update d = Σ_t α_t g_t with Σ_t α_t = 1 whose projections on every unit task gradient
u_t = g_t/‖g_t‖ are equal. The paper's closed form, with D = [g_1 − g_t]_{t≥2} and
U = [u_1 − u_t]_{t≥2}::

    α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹,   α_1 = 1 − Σ_{t≥2} α_t

Conventions pinned here:

* The same solution from the Gram matrix M = GGᵀ: u_tᵀd equal for all t ⟺ Mα ∝ n with
  n_t = ‖g_t‖, so α = M⁺n / 𝟙ᵀM⁺n (pseudo-inverse; the generalisation of torchjd's ``IMTLG``).
  For full-rank G it equals the closed form above (tested); unlike it, it stays defined when a
  gradient is zero (that task gets α_t = 0) or the rows are linearly dependent. When 𝟙ᵀM⁺n
  vanishes no direction is impartial and the update is zero.
* Σ α_t = 1: the update has the scale of one task gradient (like LibMTL's and torchjd's IMTL-G),
  not of the sum over tasks. LibMTL's ``IMTL`` is the hybrid IMTL-L+G; its gradient part at the
  initial loss scales (s = 0) is exactly this method.
* The Gram matrix is formed from G divided by its largest entry, so α does not depend on scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.registry import register_method

from .gradient_combination import GradientCombination


@dataclass(frozen=True)
class IMTLGParams:
    """IMTL-G has no hyper-parameters."""


def _scaled_gram(grads: Tensor) -> Tensor:
    peak = grads.detach().abs().max() if grads.numel() else grads.new_zeros(())
    g = grads.detach() / peak if peak > 0 else grads.detach()
    g = g.double()
    return g @ g.T


def imtl_g_weights(gram: Tensor) -> Tensor:
    """α = M⁺n / 𝟙ᵀM⁺n for the Gram matrix M (zeros when the denominator vanishes)."""
    m = gram.detach().double()
    peak = m.diagonal().max() if m.numel() else m.new_zeros(())
    if not peak > 0:
        return torch.zeros(m.shape[0], dtype=gram.dtype, device=gram.device)
    m = m / peak
    norms = m.diagonal().clamp_min(0).sqrt()
    v = torch.linalg.pinv(m, rtol=1e-10, hermitian=True) @ norms
    total = v.sum()
    if total.abs() <= 1e-12 * v.abs().sum().clamp_min(1e-300):
        return torch.zeros_like(v).to(gram.dtype)
    return (v / total).to(gram.dtype)


def imtl_g_combine(grads: Tensor) -> Tensor:
    """Σ_t α_t g_t with the IMTL-G weights of the T×P matrix ``grads``."""
    return imtl_g_weights(_scaled_gram(grads)).to(grads.device, grads.dtype) @ grads


@register_method("imtl_g")
class IMTLG(GradientCombination):
    """IMTL-G (Liu 2021): the convex-sum update with equal projections on every unit task gradient."""

    Params = IMTLGParams

    def validate(self) -> None:
        if len(self.task_names) < 1:
            raise ValueError(f"IMTL-G needs at least one task, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """IMTL-G has no hyper-parameters: an empty search space."""
        return {}

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        alpha = imtl_g_weights(_scaled_gram(grads)).to(grads.device, grads.dtype)
        logs = {f"weight/{t}": float(a) for t, a in zip(self.task_names, alpha.tolist())}
        return alpha @ grads, logs
