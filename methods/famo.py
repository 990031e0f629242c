"""FAMO — fast adaptive multitask optimisation (Liu et al., NeurIPS 2023).

Task logits w (initialised to 0), z = softmax(w), D_t = L_t + 1e-8. The model is trained on::

    c = Σ_t z_t / D_t   (detached),    loss = Σ_t (z_t / c)·log D_t

so that every task's log-loss decreases at a balanced rate. After the optimizer step the trainer
evaluates the losses again on the same batch without gradient (``needs.extra_forward``; the
``after_step`` hook) and the logits are updated from the observed decrease of the log-losses::

    δ_t = log D_t(before) − log D_t(after),    ∇_w = J_softmax(w)ᵀ δ = z ⊙ (δ − ⟨z, δ⟩)

with FAMO's own Adam (lr 0.025, coupled L2 weight decay γ as in ``torch.optim.Adam``) — not the
trainer's optimizer: the logits are a buffer, so the trainer never sees them. The logits, the Adam
moments and step count, and the pending log-losses are buffers and are checkpointed with the run.

Defaults as in the official code (Cranial-XIX/FAMO, ``famo.py``, class ``FAMO``): γ = 0.01
(``methods.md`` once said 1e-3), logit lr 0.025, and the shared parameters' gradient norm clipped to
``max_norm`` = 1.0 after the backward pass (``clip_grad_norm_(shared_parameters, max_norm)``;
``max_norm = 0`` turns it off). Under fp16 the clipping acts on the true (unscaled) norm; a
non-finite gradient is left to the loss scaler.

Conventions: ``log D_t`` is invariant to a positive rescaling of L_t, so the task's configured
weight λ_t cannot change FAMO's update (beyond the 1e-8) and is not used. The losses must be
non-negative (the official ``min_losses`` are 0). ``weight/<task>`` reports z_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.method import MethodNeeds, MultiTaskMethod, StepInputs, detach_float
from mtlbench.registry import register_method

LOSS_EPS = 1e-8


@dataclass(frozen=True)
class FAMOParams:
    """FAMO hyper-parameters: the logits' Adam (lr, γ) and the shared gradient's norm clip."""

    lr: float = 0.025
    weight_decay: float = 0.01
    max_norm: float = 1.0


def adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One in-place Adam step on ``param`` (the ``torch.optim.Adam`` rule, L2 weight decay coupled).

    The moments and the step count are tensors owned by the caller (buffers), so they are part of
    its ``state_dict()`` and follow it across devices.
    """
    beta1, beta2 = betas
    if weight_decay:
        grad = grad + weight_decay * param
    step += 1
    k = float(step)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**k
    bias2 = 1 - beta2**k
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias1)


def softmax_vjp(logits: Tensor, vector: Tensor) -> Tensor:
    """J_softmax(w)ᵀ v = z ⊙ (v − ⟨z, v⟩) with z = softmax(w) (the Jacobian is symmetric)."""
    z = torch.softmax(logits, dim=0)
    return z * (vector - (z * vector).sum())


def famo_objective(losses: Tensor, logits: Tensor) -> Tensor:
    """Σ_t (z_t / c)·log D_t with z = softmax(w), D = L + 1e-8 and c = Σ z_t / D_t detached."""
    d = losses + LOSS_EPS
    z = torch.softmax(logits, dim=0).to(d.dtype)
    c = (z / d).sum().detach()
    return (z / c * d.log()).sum()


@register_method("famo")
class FAMO(MultiTaskMethod):
    """FAMO (Liu 2023): balance the tasks' log-loss decrease with softmax logits updated after each step."""

    Params = FAMOParams
    needs = MethodNeeds(extra_forward=True)

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        k = len(self.task_names)
        self.register_buffer("logits", torch.zeros(k))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("log_losses_before", torch.zeros(k))
        self.register_buffer("pending", torch.zeros((), dtype=torch.bool))

    def validate(self) -> None:
        check_param("lr", self.params.lr, low=0, low_open=True)
        check_param("weight_decay", self.params.weight_decay, low=0)
        check_param("max_norm", self.params.max_norm, low=0)
        check_tasks("FAMO", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The logits' learning rate and weight decay, both log-uniform."""
        return {
            "lr": trial.suggest_float("lr", 1e-3, 0.1, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
        }

    def _stack(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[t].float() for t in self.task_names])
        if (stacked.detach() < 0).any():
            bad = {t: detach_float(losses[t]) for t in self.task_names if float(losses[t].detach()) < 0}
            raise ValueError(f"FAMO needs non-negative task losses (it takes their log); got {bad}")
        return stacked

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        losses = self._stack(inputs.losses)
        objective = famo_objective(losses, self.logits.to(losses.device))
        self.log_losses_before.copy_((losses.detach() + LOSS_EPS).log())
        self.pending.fill_(True)
        inputs.scale(objective).backward()
        z = torch.softmax(self.logits, dim=0).tolist()
        logs = {"loss": detach_float(objective), **self._clip(inputs)}
        logs.update({f"weight/{t}": w for t, w in zip(self.task_names, z)})
        return logs

    def _clip(self, inputs: StepInputs) -> dict[str, float]:
        """Clip the shared gradient's true norm to ``max_norm`` (the official code's clip_grad_norm_)."""
        grads = [p.grad for p in inputs.shared_parameters if p.grad is not None]
        if not self.params.max_norm > 0 or not grads:
            return {}
        norm = (
            float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
            / inputs.loss_scale
        )
        if math.isfinite(norm) and norm > self.params.max_norm:
            factor = self.params.max_norm / norm
            for g in grads:
                g.mul_(factor)
        return {"famo/shared_grad_norm": norm}

    def after_step(self, recompute_losses: Callable[[], dict[str, Tensor]]) -> dict[str, float]:
        """Update the logits from the log-loss decrease that the optimizer step achieved on this batch."""
        if not bool(self.pending):
            return {}
        with torch.no_grad():
            after = (self._stack(recompute_losses()).detach() + LOSS_EPS).log()
            delta = self.log_losses_before - after.to(self.log_losses_before.device)
            self.pending.fill_(False)
            if not torch.isfinite(delta).all():
                return {"famo/skipped_update": 1.0}
            grad = softmax_vjp(self.logits, delta)
            adam_update(
                self.logits,
                grad,
                self.exp_avg,
                self.exp_avg_sq,
                self.adam_step,
                lr=self.params.lr,
                weight_decay=self.params.weight_decay,
            )
        logs = {f"famo/log_loss_decrease/{t}": float(d) for t, d in zip(self.task_names, delta.tolist())}
        return logs
