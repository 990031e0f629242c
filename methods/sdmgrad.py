"""SDMGrad — stochastic direction-oriented multi-objective gradient (Xiao et al., NeurIPS 2023).

With A the task Gram matrix normalised by the squared mean gradient norm, the simplex weights w are
improved by ``n_iter`` steps of projected SGD with momentum on ``½ wᵀ A w + λ wᵀ A w̃`` (w̃ = 𝟙/T,
the direction of the mean gradient), and the update is pulled towards the mean gradient::

    A = G Gᵀ / s²,  s = mean_t ‖g_t‖
    v ← μ v + A (w + λ w̃);  w ← Π_Δ(w − η v)            (n_iter times; v = 0 at each step's start)
    d = Gᵀ (w + λ w̃) / (1 + λ)

w persists from step to step (it starts at 𝟙/T), so the method has state.

Reference code read: LibMTL (GitHub main) ``LibMTL/weighting/SDMGrad.py`` (modified from the
official ``OptMN-Lab/sdmgrad``) and torchjd 0.18 ``aggregation/_sdmgrad.py``. Parity is tested
against torchjd's ``SDMGradWeighting`` over several steps with LibMTL's learning rate.

Conventions pinned here:

* **Single batch.** The paper (and LibMTL, which takes a ``[3, T]`` loss tensor) uses three
  independent mini-batches ξ, ξ′, ζ: ``A = G_ξ G_ξ′ᵀ`` and ``d`` from G_ζ. The trainer gives one
  batch, so all three are the same G — the stochastic part of the method is absent and no random
  numbers are drawn. This is torchjd's ``SDMGradWeighting`` fed with the single-batch Gramian.
* η = 5 and μ = 0.5 as LibMTL (torchjd's default η is 10); λ = 0.3 and 20 iterations (LibMTL).
* LibMTL divides by ``s² + 1e-8``, which is not scale-free (at gradient norms 1e-4 the inner
  problem loses its curvature); here by s² exactly (A = 0 when G = 0).
* The inner gradient is ``A (w + λ w̃)`` (torchjd; LibMTL writes ``A w + λ·mean_rows(A)``, the
  same). d is a convex combination (mean-like), not a sum. Heads (``heads``): ``unweighted``
  (default) back-propagates Σ λ_t L_t (LibMTL's heads get three batches' worth of Σ L_t),
  ``weighted`` the update's weights. w is a buffer, checkpointed with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import StepContext, check_param, check_tasks, register_method
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting
from mtlbench.methods.moco import project_to_simplex


@dataclass(frozen=True)
class SDMGradParams:
    """SDMGrad hyper-parameters: pull λ towards the mean, inner steps, inner learning rate, momentum."""

    lamda: float = 0.3
    n_iter: int = 20
    lr: float = 5.0
    momentum: float = 0.5
    heads: HeadWeighting = "unweighted"


def sdmgrad_weights(gram: Tensor, w: Tensor, params: SDMGradParams) -> tuple[Tensor, Tensor]:
    """The new simplex weights w and the update weights ``(w + λ w̃)/(1 + λ)`` (float64 inside)."""
    m = gram.detach().to(torch.float64)
    t = m.shape[0]
    scale = m.diagonal().clamp(min=0.0).sqrt().mean()
    a = m / scale.pow(2) if scale > 0 else torch.zeros_like(m)
    w = w.detach().to(m)
    mean = torch.full((t,), 1.0 / t, dtype=m.dtype, device=m.device)
    velocity = torch.zeros_like(w)
    for _ in range(params.n_iter):
        velocity = params.momentum * velocity + a @ (w + params.lamda * mean)
        w = project_to_simplex(w - params.lr * velocity)
    return w, ((w + params.lamda * mean) / (1.0 + params.lamda)).to(gram.dtype)


@register_method("sdmgrad")
class SDMGrad(GramianWeighting):
    """SDMGrad (Xiao 2023), single batch: projected-SGD simplex weights pulled towards the mean gradient."""

    Params = SDMGradParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("simplex_weights", torch.full((t,), 1.0 / t, dtype=torch.float64))

    def validate(self) -> None:
        p = self.params
        check_param("lamda", p.lamda, low=0.0)
        check_param("n_iter", p.n_iter, "int", low=1)
        check_param("lr", p.lr, low=0.0, low_open=True)
        check_param("momentum", p.momentum, low=0.0, high=1.0, high_open=True)
        check_param("heads", p.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("SDMGrad", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """λ log-uniform in [0.01, 10] (the paper's grid 0.1 … 1 inside); the solver settings are fixed."""
        return {"lamda": trial.suggest_float("lamda", 0.01, 10.0, log=True)}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        w, weights = sdmgrad_weights(gram, self.simplex_weights, self.params)
        self.simplex_weights.copy_(w)
        return weights, {}
