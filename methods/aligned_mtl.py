"""Aligned-MTL (Senushkin et al., CVPR 2023): align the task gradients' principal components.

With ``M = G Gᵀ = V Λ Vᵀ`` (``torch.linalg.eigh``) and only the eigenvalues above
``max(Λ)·T·eps`` kept (eps of the Gram matrix's dtype), the balance transformation is::

    B = √λ_min · V Λ^{-1/2} Vᵀ          (λ_min: the smallest kept eigenvalue)

and the task weights are ``α = B 𝟙``; the shared update is ``d = Gᵀα = Σ_t α_t g_t``. The
transformed matrix ``Ĝ = B G`` has ``Ĝ Ĝᵀ = λ_min · V Vᵀ``: on the kept subspace all its singular
values equal √λ_min (condition number 1), i.e. the task contributions are aligned and balanced.
Orthogonal gradients of equal norm give ``B = I`` and plain summation. An all-zero ``G`` keeps no
eigenvalue and gives ``α = 𝟙`` (and d = 0).

Conventions: the weights are ``B 𝟙`` as in ``methods.md`` (a sum over tasks; the official code,
SamsungLabs/MTL ``mtl/weighting/aligned.py``, also weighs by a preference vector of ones); torchjd's
``AlignedMTL`` uses the mean preference vector, i.e. ``B 𝟙 / T``. The Gram matrix is formed in
float64 (the base class), so the eps cut-off is float64's: with float32 a norm spread of 1e3 already
puts a true eigenvalue (1e-6 of the largest) under ``T·eps``. The update acts on the shared
parameters only; heads receive their ordinary gradient of Σ λ_t L_t. ``weight/<task>`` logs α.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_tasks
from mtlbench.api.gradients import StepContext
from mtlbench.api.weighting import GramianWeighting
from mtlbench.registry import register_method


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
class AlignedMTL(GramianWeighting):
    """Aligned-MTL: task weights B𝟙 from the eigendecomposition of G Gᵀ that align the task gradients."""

    def validate(self) -> None:
        check_tasks("Aligned-MTL", self.task_names, 2)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return aligned_mtl_weights(gram), {}
