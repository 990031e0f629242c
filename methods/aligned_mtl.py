"""Aligned-MTL (Senushkin et al., CVPR 2023): align the task gradients' principal components.

With ``M = G Gᵀ = V Λ Vᵀ`` (``torch.linalg.eigh``) and only the eigenvalues above
``max(Λ)·T·eps`` kept (eps of the Gram matrix's dtype), the balance transformation is::

    B = √λ_min · V Λ^{-1/2} Vᵀ          (λ_min: the smallest kept eigenvalue)

and the task weights are ``α = B 𝟙``; the shared update is ``d = Gᵀα = Σ_t α_t g_t``. The
transformed matrix ``Ĝ = B G`` has ``Ĝ Ĝᵀ = λ_min · V Vᵀ``: on the kept subspace all its singular
values equal √λ_min (condition number 1), i.e. the task contributions are aligned and balanced.
Orthogonal gradients of equal norm give ``B = I`` and plain summation. An all-zero ``G`` keeps no
eigenvalue and gives ``α = 𝟙`` (and d = 0).

Conventions: the weights are ``B 𝟙`` as in ``methods.md`` (a sum over tasks); torchjd's
``AlignedMTL`` uses the mean preference vector, i.e. ``B 𝟙 / T``. The update acts on the shared
parameters only; heads receive their ordinary gradient of Σ λ_t L_t.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.registry import register_method

from .gradient_combination import GradientCombination


def balance_transformation(gram: Tensor) -> Tensor:
    """``B = √λ_min · V Λ^{-1/2} Vᵀ`` on the eigenvalues of ``gram`` above ``max(Λ)·T·eps``.

    Returns the identity when no eigenvalue is kept (``gram`` = 0).
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"Parameter `gram` should be a square matrix. Found shape {tuple(gram.shape)}.")
    t = gram.shape[0]
    eigenvalues, vectors = torch.linalg.eigh(gram)
    threshold = eigenvalues.max() * t * torch.finfo(gram.dtype).eps
    keep = eigenvalues > threshold
    if not bool(keep.any()):
        return torch.eye(t, dtype=gram.dtype, device=gram.device)
    lam, v = eigenvalues[keep], vectors[:, keep]
    return lam.min().sqrt() * (v * lam.rsqrt()) @ v.T


def aligned_mtl_weights(gram: Tensor) -> Tensor:
    """The Aligned-MTL task weights ``α = B 𝟙`` for the T×T Gram matrix ``G Gᵀ``."""
    return balance_transformation(gram).sum(dim=1)


@register_method("aligned_mtl")
class AlignedMTL(GradientCombination):
    """Aligned-MTL: task weights B𝟙 from the eigendecomposition of G Gᵀ that align the task gradients."""

    def validate(self) -> None:
        if len(self.task_names) < 2:
            raise ValueError(f"Aligned-MTL needs at least two tasks, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {}

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``d = Gᵀ α`` with ``α = B 𝟙``."""
        alpha = aligned_mtl_weights(grads @ grads.T)
        logs = {f"aligned/alpha/{name}": float(a) for name, a in zip(self.task_names, alpha.tolist())}
        return grads.T @ alpha, logs
