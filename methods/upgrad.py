"""UPGrad — project every task gradient onto the dual cone of all of them, then add them up.

Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization* (2024), Eq. 3 and Prop. 1. The
dual cone of the rows of G is ``{x : G x >= 0}``. The projection of ``Gᵀu`` onto it is ``Gᵀv`` with::

    v = argmin_{v >= u} vᵀ (G Gᵀ) v

and UPGrad's update is ``Σ_i π(g_i) = Gᵀ Σ_i v_i`` with ``u_i = e_i``. Every term lies in the dual
cone, so ⟨g_t, d⟩ >= 0 for every task t.

Reference code read: torchjd 0.18 ``aggregation/_upgrad.py`` and ``_linalg/_dual_cone.py``;
LibMTL (GitHub main) ``LibMTL/weighting/UPGrad.py``, itself taken from torchjd. The parity test
compares against torchjd 0.18 on the same matrices.

Conventions pinned here:

* **Sum, not mean.** torchjd and LibMTL use the preference vector 𝟙/T (the mean of the projected
  gradients); the project combines task gradients by their **sum** (``methods.md``), so the default
  ``scale_by_tasks = True`` returns T times torchjd's result. The projection is positively
  homogeneous in u, so this is exactly a factor T; ``scale_by_tasks = False`` gives torchjd's value.
* **No regularisation.** torchjd divides the Gramian by its trace and adds ``1e-4·I`` before calling
  quadprog (quadprog needs a positive definite matrix); that moves the result by about 1e-4
  relative. Here each QP is solved as a non-negative least-squares problem (Lawson–Hanson, exact
  active set, ``scipy.optimize.nnls``) on ``A = Λ^{1/2}Vᵀ`` with ``G Gᵀ = VΛVᵀ`` (trace-normalised),
  which needs no positive definiteness: zero rows and rank deficiency are handled exactly. The
  parity test therefore runs torchjd with ``reg_eps = 0``.
* The update acts on the shared parameters. Heads (``heads``): ``unweighted`` (default; torchjd's
  ``mtl_backward`` and LibMTL give each head its task's gradient) back-propagates Σ λ_t L_t,
  ``weighted`` Σ w_t λ_t L_t with the UPGrad weights ``w = Σ_i v_i`` (logged as ``weight/<task>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting


@dataclass(frozen=True)
class UPGradParams:
    """UPGrad hyper-parameters: sum (True, the project's convention) or mean (torchjd); heads' loss."""

    scale_by_tasks: bool = True
    heads: HeadWeighting = "unweighted"


def dual_cone_weights(gram: Tensor, prefs: Tensor) -> Tensor:
    """For each row u of ``prefs`` (K×T), the ``v >= u`` minimising ``vᵀ gram v`` (float64 inside).

    ``Gᵀv`` is then the projection of ``Gᵀu`` onto the dual cone of the rows of G. With
    ``v = u + x`` the problem is ``min_{x >= 0} ‖A x + A u‖²`` for any ``A`` with ``AᵀA = gram``,
    an NNLS problem of size T×T.
    """
    m = gram.detach().to("cpu", torch.float64).numpy()
    u_all = prefs.detach().to("cpu", torch.float64).numpy()
    trace = float(np.trace(m))
    if not trace > 0:
        return prefs.clone()  # G = 0: every v >= u is optimal; v = u
    m = (m + m.T) / (2.0 * trace)
    eigenvalues, vectors = np.linalg.eigh(m)
    a = np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * vectors.T
    out = np.empty_like(u_all)
    for k, u in enumerate(u_all):
        x, _ = nnls(a, -(a @ u), maxiter=50 * max(1, len(u)))
        out[k] = u + x
    return torch.as_tensor(out, dtype=gram.dtype, device=gram.device)


def upgrad_weights(gram: Tensor, scale_by_tasks: bool = True) -> Tensor:
    """UPGrad's task weights ``Σ_i v_i`` (u_i = e_i, or e_i/T without ``scale_by_tasks``)."""
    t = gram.shape[0]
    prefs = torch.eye(t, dtype=gram.dtype, device=gram.device)
    weights = dual_cone_weights(gram, prefs).sum(dim=0)
    return weights if scale_by_tasks else weights / t


def upgrad_combine(grads: Tensor, scale_by_tasks: bool = True) -> Tensor:
    """The UPGrad update for the T×P matrix ``grads``."""
    return upgrad_weights(grads @ grads.T, scale_by_tasks) @ grads


@register_method("upgrad")
class UPGrad(GramianWeighting):
    """UPGrad (Quinton & Rey 2024): sum of the task gradients projected onto their dual cone."""

    Params = UPGradParams

    def validate(self) -> None:
        check_param("scale_by_tasks", self.params.scale_by_tasks, "bool")
        check_param("heads", self.params.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("UPGrad", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """UPGrad has no hyper-parameter to tune (the sum/mean choice is a convention)."""
        return {}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return upgrad_weights(gram, self.params.scale_by_tasks), {}
