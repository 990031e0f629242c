"""GradNorm — gradient normalisation for adaptive loss balancing (Chen et al., ICML 2018).

Learnable task weights w_t (Σ_t w_t = T, initialised to 1). On a layer W of the shared network::

    G_t = ‖∇_W w_t·L_t‖ = w_t·‖∇_W L_t‖,     L̃_t = L_t / L_t(0),     r_t = L̃_t / mean_t L̃_t
    L_grad = Σ_t | G_t − mean_t(G)·r_t^α |   (the target mean(G)·r_t^α is a constant)

The model receives the gradient of Σ_t w_t·λ_t·L_t (λ_t the task's configured weight, w detached);
w receives the gradient of L_grad only.

Choices pinned here:

* W is the **last shared parameter tensor with ndim ≥ 2** in ``inputs.shared_parameters`` (module
  order, so the deepest convolution/linear weight of the backbone — the paper's "last shared
  layer"; biases and norm scales are skipped because their gradient norm says little about the
  layer). Since G_t = w_t·‖∇_W L_t‖, the gradient of L_grad with respect to w needs no second-order
  pass: one ``autograd.grad`` per task of the un-weighted loss gives ‖∇_W L_t‖.
* L_t(0) are the task losses of the first step this method sees (the paper's t = 0). LibMTL uses
  the mean loss of the first epoch instead and trains with equal weights during that epoch.
* w is a buffer updated by GradNorm's **own** Adam (``lr``, no weight decay) inside ``backward``,
  after the model's gradient was taken with the current w; then w is clamped to ≥ ``min_weight``
  and renormalised to Σ w_t = T. The trainer's optimizer never sees w (no AdamW weight decay on
  it). The update happens even if an fp16 step is later skipped for overflow; a step whose task
  gradients are not finite leaves w unchanged. LibMTL instead parametrises w = T·softmax(v) and
  trains v with the model's optimizer.
* ``weight/<task>`` reports the w_t used for this step's model gradient.
* No official code is public; α = 1.5 is LibMTL's default (``config.py``, used by
  ``weighting/GradNorm.py``); lr 0.025 is the project's choice for the weights' own Adam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.method import MultiTaskMethod, StepInputs, detach_float
from mtlbench.registry import register_method

from .famo import adam_update


@dataclass(frozen=True)
class GradNormParams:
    """GradNorm hyper-parameters."""

    alpha: float = 1.5
    lr: float = 0.025
    min_weight: float = 1e-3


def last_shared_layer(shared_parameters: Sequence[nn.Parameter]) -> nn.Parameter:
    """The last trainable shared parameter tensor with at least two dimensions."""
    for p in reversed(list(shared_parameters)):
        if p.requires_grad and p.ndim >= 2:
            return p
    raise ValueError("GradNorm needs a shared parameter tensor with ndim >= 2 (a conv or linear weight)")


def gradnorm_loss(
    weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float
) -> Tensor:
    """L_grad = Σ_t |w_t·g_t − mean(w·g)·r_t^α| with r_t = L̃_t / mean L̃, L̃ = L / L(0).

    ``grad_norms`` are g_t = ‖∇_W L_t‖ (constants); the target is detached, so only ``weights``
    receive a gradient. A zero mean relative loss gives r = 1.
    """
    tiny = torch.finfo(losses.dtype).tiny
    relative = losses / initial_losses.clamp_min(tiny)
    mean_relative = relative.mean()
    r = relative / mean_relative if mean_relative > 0 else torch.ones_like(relative)
    g = weights * grad_norms
    target = (g.mean() * r.pow(alpha)).detach()
    return (g - target).abs().sum()


@register_method("gradnorm")
class GradNorm(MultiTaskMethod):
    """GradNorm (Chen 2018): learnt task weights pulling gradient norms towards relative training rates."""

    Params = GradNormParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        k = len(self.task_names)
        self.register_buffer("task_weights", torch.ones(k))
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        p = self.params
        check_param("alpha", p.alpha, low=0)
        check_param("lr", p.lr, low=0, low_open=True)
        check_param("min_weight", p.min_weight, low=0, high=1, high_open=True)
        check_tasks("GradNorm", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The restoring-force exponent α in [0, 3] and the weights' learning rate, log-uniform."""
        return {
            "alpha": trial.suggest_float("alpha", 0.0, 3.0),
            "lr": trial.suggest_float("lr", 1e-4, 0.1, log=True),
        }

    def _task_grad_norms(self, inputs: StepInputs, layer: nn.Parameter) -> Tensor:
        """g_t = ‖∇_W L_t‖ of the un-scaled losses (gradients of the fp16-scaled loss, divided back)."""
        norms = []
        for t in self.task_names:
            loss = inputs.losses[t]
            if not loss.requires_grad:
                norms.append(layer.new_zeros((), dtype=torch.float32))
                continue
            (g,) = torch.autograd.grad(inputs.scale(loss), [layer], retain_graph=True, allow_unused=True)
            norms.append(layer.new_zeros((), dtype=torch.float32) if g is None else g.float().norm())
        return torch.stack(norms) / inputs.loss_scale

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        losses = torch.stack([inputs.losses[t].detach().float() for t in self.task_names])
        device = self.task_weights.device
        if not bool(self.initialised):
            self.initial_losses.copy_(losses.to(device))
            self.initialised.fill_(True)
        layer = last_shared_layer(inputs.shared_parameters)
        grad_norms = self._task_grad_norms(inputs, layer).to(device)

        current = self.task_weights.clone()
        used = current.tolist()
        total = sum(w * inputs.weights[t] * inputs.losses[t] for w, t in zip(used, self.task_names))
        inputs.scale(total).backward()  # type: ignore[union-attr]

        weights = current.clone().requires_grad_(True)
        with torch.enable_grad():
            l_grad = gradnorm_loss(
                weights, grad_norms, losses.to(device), self.initial_losses, self.params.alpha
            )
            (w_grad,) = torch.autograd.grad(l_grad, [weights])
        logs = {"loss": detach_float(total), "gradnorm/loss": detach_float(l_grad)}  # type: ignore[arg-type]
        if torch.isfinite(w_grad).all() and torch.isfinite(grad_norms).all():
            with torch.no_grad():
                adam_update(
                    self.task_weights,
                    w_grad,
                    self.exp_avg,
                    self.exp_avg_sq,
                    self.adam_step,
                    lr=self.params.lr,
                )
                self.task_weights.clamp_(min=self.params.min_weight)
                self.task_weights.mul_(len(self.task_names) / self.task_weights.sum())
        else:
            logs["gradnorm/skipped_update"] = 1.0
        for t, w, g in zip(self.task_names, used, (current * grad_norms).tolist()):
            logs[f"weight/{t}"] = w
            logs[f"gradnorm/grad_norm/{t}"] = g
        return logs
