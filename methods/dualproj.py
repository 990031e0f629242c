"""DualProj — project the summed task gradient onto the dual cone of the task gradients.

The rule of GEM (Lopez-Paz & Ranzato, NeurIPS 2017, Eq. 11) applied to multitask gradients, as in
torchjd: with ``u`` the preference vector, the update is ``Gᵀv`` with::

    v = argmin_{v >= u} vᵀ (G Gᵀ) v

i.e. the projection of ``Gᵀu`` onto ``{x : G x >= 0}``, so ⟨g_t, d⟩ >= 0 for every task t. Without
conflict (``G Gᵀ u >= 0``) the update is ``Gᵀu`` itself.

Reference code read: torchjd 0.18 ``aggregation/_dualproj.py`` and ``_linalg/_dual_cone.py``
(LibMTL has no DualProj). The parity test compares against torchjd 0.18 on the same matrices.

Conventions pinned here:

* **Sum, not mean.** torchjd projects the mean gradient (u = 𝟙/T); the default here projects the
  sum (u = 𝟙), the project's convention — exactly T times torchjd's result (the projection is
  positively homogeneous). ``scale_by_tasks = False`` gives torchjd's value.
* The QP is solved exactly as an NNLS problem without torchjd's ``1e-4·I`` regularisation (see
  :mod:`mtlbench.methods.upgrad`); parity is checked against torchjd with ``reg_eps = 0``.
* Heads (``heads``): ``unweighted`` (default, torchjd) back-propagates Σ λ_t L_t, ``weighted``
  Σ v_t λ_t L_t with the projection's weights v.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting
from mtlbench.methods.upgrad import dual_cone_weights


@dataclass(frozen=True)
class DualProjParams:
    """DualProj hyper-parameters: project the sum (True, the project's convention) or the mean (torchjd)."""

    scale_by_tasks: bool = True
    heads: HeadWeighting = "unweighted"


def dualproj_weights(gram: Tensor, scale_by_tasks: bool = True) -> Tensor:
    """The weights ``v`` of the projection of ``Gᵀu`` (u = 𝟙, or 𝟙/T without ``scale_by_tasks``)."""
    t = gram.shape[0]
    u = torch.full((1, t), 1.0 if scale_by_tasks else 1.0 / t, dtype=gram.dtype, device=gram.device)
    return dual_cone_weights(gram, u)[0]


def dualproj_combine(grads: Tensor, scale_by_tasks: bool = True) -> Tensor:
    """The DualProj update for the T×P matrix ``grads``."""
    return dualproj_weights(grads @ grads.T, scale_by_tasks) @ grads


@register_method("dualproj")
class DualProj(GramianWeighting):
    """DualProj (GEM rule, torchjd): the summed gradient projected onto the task gradients' dual cone."""

    Params = DualProjParams

    def validate(self) -> None:
        check_param("scale_by_tasks", self.params.scale_by_tasks, "bool")
        check_param("heads", self.params.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("DualProj", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """DualProj has no hyper-parameter to tune (the sum/mean choice is a convention)."""
        return {}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return dualproj_weights(gram, self.params.scale_by_tasks), {}
