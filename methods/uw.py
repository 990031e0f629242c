"""UW — uncertainty weighting (Kendall et al., CVPR 2018).

Each task t has a learnable log-variance s_t = log σ_t² (initialised to ``init_log_variance``,
0 by default) and the objective is Kendall's (eq. 7 and 10 of the paper)::

    L = Σ_t k_t·exp(−s_t)·λ_t·L_t + ½·s_t,     k_t = 1 (classification) or ½ (regression)

with λ_t the task's configured weight. By default every task has the Gaussian regression form
1/(2σ²) — the rule ``methods.md`` pins (Σ_t ½·exp(−s_t)·L_t + ½·s_t), as LibMTL and the Nash-MTL
repository have it. The tasks named in ``classification`` (e.g. ``[cls]`` for the thyroid task's
softmax classifier; names that are not tasks of the run are ignored) use Kendall's classification
form 1/σ² instead — a softmax likelihood with temperature σ². Both have the same stationary weights
in σ², but the classification form moves s_t twice as fast. The s_t are an ``nn.Parameter`` of this
module, so the trainer's optimizer updates them together with the network; they are checkpointed
through ``state_dict()``.

Conventions: no official code is public. LibMTL (``weighting/UW.py``) and the Nash-MTL repository
(``methods/weight_methods.py``, ``Uncertainty``) use the regression form for every task, the
default here; LibMTL also initialises s_t = −0.5 and has no λ_t (``init_log_variance=-0.5``). The
trainer's AdamW applies its weight decay to s_t as well, which pulls σ_t² gently towards 1.
``weight/<task>`` reports k_t·exp(−s_t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.method import MultiTaskMethod, StepInputs, detach_float
from mtlbench.registry import register_method


@dataclass(frozen=True)
class UWParams:
    """UW hyper-parameters."""

    init_log_variance: float = 0.0
    #: Tasks with Kendall's classification form (k_t = 1); the others, by default all, k_t = ½.
    classification: tuple[str, ...] = ()


def uncertainty_objective(
    losses: torch.Tensor,
    log_variances: torch.Tensor,
    weights: torch.Tensor,
    factors: torch.Tensor | float = 0.5,
) -> torch.Tensor:
    """Σ_t k_t·exp(−s_t)·λ_t·L_t + ½·s_t for stacked (T,) losses, log-variances, weights and k_t."""
    return (factors * torch.exp(-log_variances) * weights * losses + 0.5 * log_variances).sum()


@register_method("uw")
class UW(MultiTaskMethod):
    """Uncertainty weighting (Kendall 2018): learnable s_t, Σ_t k_t·exp(−s_t)·λ_t·L_t + ½·s_t."""

    Params = UWParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        init = torch.full((len(self.task_names),), float(self.params.init_log_variance))
        self.log_variances = nn.Parameter(init)

    def validate(self) -> None:
        check_param("init_log_variance", self.params.init_log_variance)
        names = self.params.classification
        if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                "Parameter `classification` should be a list of task names. "
                f"Found `classification = {names!r}`."
            )
        check_tasks("UW", self.task_names)

    def factors(self) -> torch.Tensor:
        """k_t: 1 for the classification tasks, ½ for the others."""
        return torch.tensor([1.0 if t in self.params.classification else 0.5 for t in self.task_names])

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """UW has nothing to tune (the log-variances are learnt): an empty search space."""
        return {}

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        s = self.log_variances
        losses = torch.stack([inputs.losses[t].float() for t in self.task_names])
        weights = torch.tensor([float(inputs.weights[t]) for t in self.task_names], device=losses.device)
        factors = self.factors().to(losses.device)
        total = uncertainty_objective(losses, s.to(losses.device), weights, factors)
        inputs.scale(total).backward()
        logs = {"loss": detach_float(total)}
        effective = factors * torch.exp(-s.detach().to(losses.device))
        for i, t in enumerate(self.task_names):
            logs[f"weight/{t}"] = detach_float(effective[i])
            logs[f"log_variance/{t}"] = detach_float(s[i])
        return logs
