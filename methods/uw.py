"""UW — uncertainty weighting (Kendall et al., CVPR 2018).

Each task t has a learnable log-variance s_t = log σ_t² (initialised to ``init_log_variance``,
0 by default) and the objective is::

    L = Σ_t ½·exp(−s_t)·λ_t·L_t + ½·s_t

with λ_t the task's configured weight. The s_t are an ``nn.Parameter`` of this module, so the
trainer's optimizer (built from the model's and the method's trainable parameters) updates them
together with the network; they are checkpointed through ``state_dict()``.

Conventions: LibMTL writes the same objective (``L_t / (2·exp(s_t)) + s_t / 2``) but initialises
s_t = −0.5 and has no λ_t; ``init_log_variance=-0.5`` reproduces it. The trainer's AdamW applies its
weight decay to s_t as well, which pulls σ_t² gently towards 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlbench.registry import register_method

from .base import MultiTaskMethod, StepInputs, detach_float


@dataclass(frozen=True)
class UWParams:
    """UW hyper-parameters."""

    init_log_variance: float = 0.0


def uncertainty_objective(
    losses: torch.Tensor, log_variances: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ_t ½·exp(−s_t)·λ_t·L_t + ½·s_t for stacked (T,) losses, log-variances and weights."""
    return (0.5 * torch.exp(-log_variances) * weights * losses + 0.5 * log_variances).sum()


@register_method("uw")
class UW(MultiTaskMethod):
    """Uncertainty weighting (Kendall 2018): learnable log-variances s_t, Σ_t ½·exp(−s_t)·λ_t·L_t + ½·s_t."""

    Params = UWParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        init = torch.full((len(self.task_names),), float(self.params.init_log_variance))
        self.log_variances = nn.Parameter(init)

    def validate(self) -> None:
        value = self.params.init_log_variance
        if not (isinstance(value, (int, float)) and abs(value) < float("inf")):
            raise ValueError(
                "Parameter `init_log_variance` should be a finite number. "
                f"Found `init_log_variance = {value}`."
            )
        if len(self.task_names) < 1:
            raise ValueError(f"UW needs at least one task, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """UW has nothing to tune (the log-variances are learnt): an empty search space."""
        return {}

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        s = self.log_variances
        losses = torch.stack([inputs.losses[t].float() for t in self.task_names])
        weights = torch.tensor([float(inputs.weights[t]) for t in self.task_names], device=losses.device)
        total = uncertainty_objective(losses, s.to(losses.device), weights)
        inputs.scale(total).backward()
        logs = {"loss": detach_float(total)}
        effective = 0.5 * torch.exp(-s.detach())
        for i, t in enumerate(self.task_names):
            logs[f"weight/{t}"] = detach_float(effective[i])
            logs[f"log_variance/{t}"] = detach_float(s[i])
        return logs
