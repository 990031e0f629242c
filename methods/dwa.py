"""DWA — dynamic weight average (Liu et al., CVPR 2019).

At epoch e (counted from 1) the task weights are::

    w_k = L̄_k(e−1) / L̄_k(e−2),    λ_k^DWA = K · softmax_k(w_k / T)

where L̄_k is the epoch-mean un-weighted training loss of task k (delivered by the trainer's
``on_epoch_end`` hook), K the number of tasks and T the temperature (2 by default, as in the paper
and LibMTL). For the first two epochs λ^DWA = 1. The objective is Σ_k λ_k^DWA·λ_k·L_k with λ_k the
task's configured weight; ``weight/<task>`` reports λ_k^DWA.

The last two epoch means, the number of epochs seen and the current weights are buffers, so a
resumed run continues with the same weights. Defaults as in the official code (lorenmt/mtan,
``im2im_pred/model_segnet_mtan.py``: ``--temp`` 2.0, weights 1 for the first two epochs). A ratio
whose denominator is not positive (a task whose mean loss was exactly 0) counts as 1, i.e. "no
change". LibMTL computes the same weights (its
``epoch > 1`` with 0-based epochs is our e ≥ 3) without the configured λ_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.method import MultiTaskMethod, StepInputs, detach_float
from mtlbench.registry import register_method


@dataclass(frozen=True)
class DWAParams:
    """DWA hyper-parameters."""

    temperature: float = 2.0


def dwa_weights(previous: torch.Tensor, before_previous: torch.Tensor, temperature: float) -> torch.Tensor:
    """K·softmax(w/T) with w_k = L̄_k(e−1)/L̄_k(e−2) (ratios with a non-positive denominator are 1)."""
    ok = before_previous > 0
    ratio = torch.where(ok, previous / torch.where(ok, before_previous, 1.0), torch.ones_like(previous))
    return previous.numel() * torch.softmax(ratio / temperature, dim=0)


@register_method("dwa")
class DWA(MultiTaskMethod):
    """Dynamic weight average (Liu 2019): weights K·softmax(L̄(e−1)/L̄(e−2) / T) of epoch-mean losses."""

    Params = DWAParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        k = len(self.task_names)
        # history[0] = L̄(e−2), history[1] = L̄(e−1); float64 so that tiny ratios are exact.
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_weights", torch.ones(k, dtype=torch.float64))

    def validate(self) -> None:
        check_param("temperature", self.params.temperature, low=0, low_open=True)
        check_tasks("DWA", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The softmax temperature, log-uniform in [0.5, 10]."""
        return {"temperature": trial.suggest_float("temperature", 0.5, 10.0, log=True)}

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        missing = [t for t in self.task_names if t not in train_losses]
        if missing:
            raise KeyError(
                f"DWA: no epoch-mean training loss for task(s) {missing} (got {sorted(train_losses)})"
            )
        current = torch.tensor([float(train_losses[t]) for t in self.task_names], dtype=torch.float64)
        self.history[0] = self.history[1]
        self.history[1] = current.to(self.history.device)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            self.task_weights.copy_(dwa_weights(self.history[1], self.history[0], self.params.temperature))

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        weights = self.task_weights.tolist()
        total = sum(w * inputs.weights[t] * inputs.losses[t] for w, t in zip(weights, self.task_names))
        inputs.scale(total).backward()  # type: ignore[union-attr]
        logs = {"loss": detach_float(total)}  # type: ignore[arg-type]
        logs.update({f"weight/{t}": w for w, t in zip(weights, self.task_names)})
        return logs
