"""DB-MTL — dual-balancing multitask learning (Lin et al., 2023, arXiv:2308.12029).

Loss-scale balancing: every task trains on ``log(L_t + 1e-8)``. Gradient-magnitude balancing: the
shared-parameter gradients ĝ_t of the log losses are tracked by an exponential moving average and
all rescaled to the largest norm before summing::

    β_k = β / k^σ                                 (k = 1, 2, … counts the steps)
    m_t ← ĝ_t + β_k (m_t − ĝ_t)                    (m = 0 before the first step)
    d   = Σ_t (max_s ‖m_s‖ / ‖m_t‖) · m_t

The heads get the ordinary gradient of Σ_t λ_t log(L_t + 1e-8).

Reference code read: LibMTL (GitHub main) ``LibMTL/weighting/DB_MTL.py`` (the authors' library;
LibMTL 1.1.5 has no DB-MTL) and the paper. The tests check two steps against golden values worked
out by hand from the formulas above.

Conventions pinned here:

* λ_t multiplies the log loss (``λ_t log(L_t + 1e-8)``): it changes the heads' balance and which
  task sets the common norm, not the shared directions; with λ = 1 this is LibMTL's rule.
* LibMTL divides by ``‖m_t‖ + 1e-8``, which is not scale-free (at norms near 1e-8 it halves the
  weight); here a task with ``m_t = 0`` contributes nothing and the others are divided exactly.
* The EMA ``m`` (T×P, on the model's device, allocated at the first step) and the step counter
  are buffers, so they are checkpointed; ``db_mtl/scale/<task>`` logs ``max‖m‖/‖m_t‖``.
* Under fp16 loss scaling the per-task gradients are unscaled before entering the EMA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import (
    MethodNeeds,
    MultiTaskMethod,
    StepInputs,
    assign_flat_grad,
    check_param,
    check_tasks,
    detach_float,
    register_method,
    task_gradient_matrix,
)

LOG_EPS = 1e-8


@dataclass(frozen=True)
class DBMTLParams:
    """DB-MTL hyper-parameters: EMA rate β in [0, 1) and its decay exponent σ >= 0 (LibMTL: 0.9, 0)."""

    beta: float = 0.9
    beta_sigma: float = 0.0


def ema_update(buffer: Tensor, grads: Tensor, beta_k: float) -> Tensor:
    """``grads + β_k (buffer − grads)``."""
    return grads + beta_k * (buffer - grads)


def balance_to_max_norm(grads: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ_t (max‖g‖/‖g_t‖) g_t`` and the scales (0 for a zero row)."""
    norms = grads.norm(dim=1)
    ok = norms > 0
    scales = torch.where(ok, norms.max() / torch.where(ok, norms, 1.0), torch.zeros_like(norms))
    return scales @ grads, scales


@register_method("db_mtl")
class DBMTL(MultiTaskMethod):
    """DB-MTL (Lin 2023): log losses, EMA of their gradients, each rescaled to the largest norm."""

    Params = DBMTLParams
    needs = MethodNeeds(shared_grads=True)

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        self.register_buffer("grad_ema", torch.zeros(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        check_param("beta", self.params.beta, low=0.0, high=1.0, high_open=True)
        check_param("beta_sigma", self.params.beta_sigma, low=0.0)
        check_tasks("DB-MTL", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """β uniform in [0.5, 0.99] and σ in [0, 1] (LibMTL's defaults 0.9 and 0 are inside)."""
        return {
            "beta": trial.suggest_float("beta", 0.5, 0.99),
            "beta_sigma": trial.suggest_float("beta_sigma", 0.0, 1.0),
        }

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "grad_ema"
        if key in state_dict:  # the EMA is sized at the first step: take the checkpoint's shape
            self.grad_ema = torch.empty_like(state_dict[key], device=self.grad_ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        shared = [p for p in inputs.shared_parameters if p.requires_grad]
        heads = [p for p in inputs.head_parameters if p.requires_grad]
        logs_t = [inputs.weights[t] * torch.log(inputs.losses[t].float() + LOG_EPS) for t in self.task_names]
        total = sum(logs_t)
        grads = task_gradient_matrix([inputs.scale(x) for x in logs_t], shared).float() / inputs.loss_scale
        if heads:
            head_grads = torch.autograd.grad(inputs.scale(total), heads, allow_unused=True)
            for p, g in zip(heads, head_grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        if self.grad_ema.shape != grads.shape:
            self.grad_ema = torch.zeros_like(grads)
        self.steps += 1
        beta_k = float(self.params.beta) / float(self.steps) ** float(self.params.beta_sigma)
        self.grad_ema.copy_(ema_update(self.grad_ema, grads, beta_k))
        combined, scales = balance_to_max_norm(self.grad_ema)
        assign_flat_grad(combined * inputs.loss_scale, shared)
        out = {"loss": detach_float(total)}  # type: ignore[arg-type]
        out.update({f"db_mtl/scale/{t}": float(s) for t, s in zip(self.task_names, scales.tolist())})
        return out
