"""ExcessMTL — weight tasks by their estimated excess risk (He et al., ICML 2024, Eqs. 6–9).

Each step, with g_t the shared-parameter gradient of λ_t·L_t and S the running sum of squared
gradients (AdaGrad's diagonal Hessian proxy, Eq. 7)::

    S_t ← S_t + g_t²,     E_t = Σ_p g_tp² / √(S_tp + 1e-7)          (excess risk proxy, Eq. 6)
    first step:  E⁰ = E  (the baseline; weights stay 𝟙)
    later:       w_t ← w_t · exp(η · E_t / E⁰_t),   w ← T · w / Σ w     (Eq. 9, scale processing)

and the model is trained on Σ_t w_t λ_t L_t — heads included, as in the official code and LibMTL.

Reference code read: LibMTL (GitHub main) ``LibMTL/weighting/ExcessMTL.py`` (modified from the
official ``yifei-he/ExcessMTL``) and torchjd 0.18 ``aggregation/_excess_mtl.py``. Parity is tested
against torchjd over several steps.

Conventions pinned here:

* Weights start at 𝟙 and sum to T (LibMTL, the official code and the project's sum convention);
  torchjd keeps them on the simplex (sum 1) — a factor T, accounted for in the parity test.
* The first step only records the baseline (LibMTL, official). torchjd 0.18 with
  ``n_warmup_steps = 0`` instead updates the weights on the first call with the *un-normalised*
  excess risk; with ``n_warmup_steps = 1`` it does what LibMTL does, and that is what the parity
  test compares (torchjd also adds 1e-7 to the baseline; the test's baselines are far above it).
* A task whose baseline is 0 (its gradient was 0 at the first step) takes its first non-zero E_t
  as baseline instead of dividing by 0 (LibMTL would produce inf/NaN weights). The update is done
  in log space (``softmax(log w + η E/E⁰)·T``), which cannot overflow.
* Cost: T backward passes for the statistics plus one for the weighted loss (as LibMTL). S (T×P,
  on the model's device, sized at the first step), E⁰ and w are buffers, checkpointed with the run.
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
    check_param,
    check_tasks,
    detach_float,
    register_method,
    task_gradient_matrix,
)

ADAGRAD_EPS = 1e-7


@dataclass(frozen=True)
class ExcessMTLParams:
    """ExcessMTL hyper-parameters: the step size η > 0 of the exponentiated update (LibMTL 1e-2)."""

    robust_step_size: float = 1e-2


def excess_risk(grads: Tensor, sq_sum: Tensor) -> Tensor:
    """``E_t = Σ_p g_tp² / √(S_tp + 1e-7)`` for the T×P gradients and accumulated squares S."""
    return (grads.pow(2) / torch.sqrt(sq_sum + ADAGRAD_EPS)).sum(dim=1)


def exponentiated_update(weights: Tensor, ratio: Tensor, step_size: float) -> Tensor:
    """``T · softmax(log w + η · ratio)`` (= w·exp(η·ratio) renormalised to sum T)."""
    return weights.numel() * torch.softmax(torch.log(weights) + step_size * ratio, dim=0)


@register_method("excess_mtl")
class ExcessMTL(MultiTaskMethod):
    """ExcessMTL (He 2024): exponentiated task weights driven by AdaGrad excess-risk estimates."""

    Params = ExcessMTLParams
    needs = MethodNeeds(shared_grads=True)

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("sq_grad_sum", torch.zeros(0))
        self.register_buffer("baseline", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("task_weights", torch.ones(t, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        check_param("robust_step_size", self.params.robust_step_size, low=0.0, low_open=True)
        check_tasks("ExcessMTL", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """η log-uniform in [1e-3, 1] (LibMTL's default 1e-2 is inside)."""
        return {"robust_step_size": trial.suggest_float("robust_step_size", 1e-3, 1.0, log=True)}

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "sq_grad_sum"
        if key in state_dict:  # sized at the first step: take the checkpoint's shape
            self.sq_grad_sum = torch.empty_like(state_dict[key], device=self.sq_grad_sum.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update_weights(self, grads: Tensor) -> Tensor:
        """One ExcessMTL weight update from the T×P task gradients; returns the new weights."""
        if self.sq_grad_sum.shape != grads.shape:
            self.sq_grad_sum = torch.zeros_like(grads)
        self.sq_grad_sum += grads.pow(2)
        risk = excess_risk(grads, self.sq_grad_sum).to(self.baseline)
        first = int(self.steps) == 0
        self.steps += 1
        missing = self.baseline <= 0
        self.baseline.copy_(torch.where(missing, risk, self.baseline))
        if not first:
            ratio = torch.where(missing, torch.zeros_like(risk), risk / self.baseline.clamp_min(1e-300))
            self.task_weights.copy_(
                exponentiated_update(self.task_weights, ratio, self.params.robust_step_size)
            )
        return self.task_weights

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        shared = [p for p in inputs.shared_parameters if p.requires_grad]
        weighted = {t: inputs.weights[t] * inputs.losses[t] for t in self.task_names}
        grads = task_gradient_matrix([inputs.scale(weighted[t]) for t in self.task_names], shared)
        weights = self.update_weights(grads.detach().float() / inputs.loss_scale).tolist()
        total = sum(w * weighted[t] for w, t in zip(weights, self.task_names))
        inputs.scale(total).backward()  # type: ignore[union-attr]
        logs = {"loss": detach_float(total)}  # type: ignore[arg-type]
        logs.update({f"weight/{t}": w for w, t in zip(weights, self.task_names)})
        return logs
