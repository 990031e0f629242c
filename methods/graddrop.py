"""GradDrop — gradient sign dropout (Chen et al., NeurIPS 2020, Algorithm 1 lines 10–15).

Per coordinate p of the task gradients, the positive sign purity ``P_p = ½ (1 + Σ_t g_tp / Σ_t |g_tp|)``
and a uniform draw ``U_p``; task t keeps its coordinate if its sign wins the draw::

    M_tp = [P_p > U_p]·[g_tp > 0] + [P_p < U_p]·[g_tp < 0]
    d = Σ_t (ℓ + (1 − ℓ) M_t) ⊙ g_t                       (ℓ: the leak)

Reference code read: torchjd 0.18 ``aggregation/_graddrop.py`` (parity tested on the same
matrices and the same uniform draws); LibMTL 1.1.5 ``weighting/GradDrop.py``; the paper.

Conventions pinned here:

* **Where it acts.** The paper and LibMTL apply GradDrop to the gradients of a shared *activation*
  layer, after multiplying them by the sign of the layer's input and summing over the batch (LibMTL
  supports only ``rep_grad = True``). Here, like torchjd, it acts on the T×P matrix of the shared
  parameters' gradients (no batch sum, no input sign), so it plugs into the same bookkeeping as
  PCGrad. LibMTL's variant is not comparable on the same matrix and is not parity-tested.
* A coordinate where every task gradient is 0 has no purity; it contributes 0 (torchjd computes
  0/0 = NaN there, which also contributes 0; LibMTL adds 1e-7 to the denominator).
* The uniform draws come from a CPU ``torch.Generator`` seeded from ``(seed, step)`` — never the
  global RNG — so a run is deterministic and a resumed run replays the same draws. One leak ℓ for
  every task (LibMTL's scalar; torchjd allows one per task). Heads get the gradient of Σ λ_t L_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import GradientCombination, StepContext, check_param, check_tasks, register_method


@dataclass(frozen=True)
class GradDropParams:
    """GradDrop hyper-parameters: the leak ℓ in [0, 1] and the seed of the uniform draws."""

    leak: float = 0.0
    seed: int = 0


def sign_purity(grads: Tensor) -> Tensor:
    """``½ (1 + Σ_t g_t / Σ_t |g_t|)`` per coordinate (½ where every task gradient is 0)."""
    total = grads.abs().sum(dim=0)
    ok = total > 0
    return 0.5 * (1.0 + torch.where(ok, grads.sum(dim=0) / torch.where(ok, total, 1.0), 0.0))


def graddrop_combine(grads: Tensor, uniform: Tensor, leak: float = 0.0) -> Tensor:
    """The GradDrop update for the T×P ``grads`` and P uniform draws ``uniform`` in [0, 1)."""
    purity = sign_purity(grads)
    keep = (purity > uniform) & (grads > 0) | (purity < uniform) & (grads < 0)
    return ((leak + (1.0 - leak) * keep.to(grads.dtype)) * grads).sum(dim=0)


@register_method("graddrop")
class GradDrop(GradientCombination):
    """GradDrop (Chen 2020): per coordinate, keep only the gradients whose sign wins a purity draw."""

    Params = GradDropParams

    def validate(self) -> None:
        check_param("leak", self.params.leak, low=0.0, high=1.0)
        check_param("seed", self.params.seed, "int", low=0)
        check_tasks("GradDrop", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The leak ℓ, uniform in [0, 0.5] (0 is the paper's and LibMTL's default)."""
        return {"leak": trial.suggest_float("leak", 0.0, 0.5)}

    def aggregate(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        generator = ctx.generator(self.params.seed)
        uniform = torch.rand(grads.shape[1], generator=generator, dtype=grads.dtype).to(grads.device)
        out = graddrop_combine(grads, uniform, float(self.params.leak))
        kept = (sign_purity(grads) > uniform).to(torch.float32).mean()
        return out, {"graddrop/positive_kept": float(kept)}
