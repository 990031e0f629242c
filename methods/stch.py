"""STCH — smooth Tchebycheff scalarisation (Lin et al., ICML 2024) on log losses with a nadir point.

After a warm-up, the objective is the smooth maximum of the log-normalised task losses::

    L = T · μ · log Σ_t exp(λ_t · log(L_t / z_t + 1e-20) / μ)

with z the nadir point: the mean task losses over the last warm-up epoch. μ → 0 approaches the
Tchebycheff (worst-task) scalarisation, large μ the (scaled) sum. Epochs are counted from 0 by
the trainer's ``on_epoch_end`` hook::

    epoch <  W :  L = Σ_t λ_t log(L_t + 1e-20)
    epoch == W :  the same, and the losses are accumulated for z
    epoch >  W :  STCH as above (z fixed at the first such step)

Reference code read: LibMTL (GitHub main) ``LibMTL/weighting/STCH.py`` (modified from the official
``Xi-L/STCH`` code); LibMTL 1.1.5 has no STCH. The test checks the loss and its gradient against a
direct evaluation of the formula (golden values computed independently).

Conventions pinned here:

* The epoch schedule is LibMTL's (W = ``warmup_epochs``, default 4 as LibMTL): the nadir comes
  from epoch W, so STCH proper starts at epoch W + 1. The factor T is LibMTL's.
* λ_t (the configured task weights) are STCH's preference weights inside the exponent (the
  paper's preference-weighted form); with λ = 1 this is LibMTL's objective. During warm-up they
  weight the log losses.
* The log-sum-exp is ``torch.logsumexp`` (LibMTL subtracts the max by hand; same value and
  gradient). Resuming past epoch W without any step in epoch W takes z from the first STCH
  step's losses. The epoch counter, the accumulated losses and z are buffers, so a resumed run keeps
  its nadir point; ``stch/phase`` logs 0 (warm-up), 1 (nadir epoch) or 2 (STCH).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api import MultiTaskMethod, StepInputs, check_param, check_tasks, detach_float, register_method

EPS = 1e-20


@dataclass(frozen=True)
class STCHParams:
    """STCH hyper-parameters: smoothing μ > 0 and the number of warm-up epochs W >= 0."""

    mu: float = 1.0
    warmup_epochs: int = 4


def stch_loss(losses: Tensor, nadir: Tensor, mu: float, weights: Tensor | None = None) -> Tensor:
    """``T · μ · logsumexp(λ ⊙ log(L/z + 1e-20) / μ)``."""
    if weights is None:
        weights = torch.ones_like(losses)
    terms = weights * torch.log(losses / nadir + EPS)
    return losses.numel() * mu * torch.logsumexp(terms / mu, dim=0)


@register_method("stch")
class STCH(MultiTaskMethod):
    """STCH (Lin 2024): smooth Tchebycheff scalarisation of nadir-normalised log losses after warm-up."""

    Params = STCHParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("loss_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("nadir", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("nadir_set", torch.zeros((), dtype=torch.bool))

    def validate(self) -> None:
        check_param("mu", self.params.mu, low=0.0, low_open=True)
        check_param("warmup_epochs", self.params.warmup_epochs, "int", low=0)
        check_tasks("STCH", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """μ log-uniform in [0.01, 10]; W in 0…4 epochs."""
        return {
            "mu": trial.suggest_float("mu", 0.01, 10.0, log=True),
            "warmup_epochs": trial.suggest_int("warmup_epochs", 0, 4),
        }

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        self.epoch += 1

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        losses = torch.stack([inputs.losses[t].float() for t in self.task_names])  # fp16: 1e-20 underflows
        lam = torch.tensor([float(inputs.weights[t]) for t in self.task_names], device=losses.device)
        epoch, warmup = int(self.epoch), int(self.params.warmup_epochs)
        if epoch <= warmup:
            total = (lam * torch.log(losses + EPS)).sum()
            if epoch == warmup:
                self.loss_sum += losses.detach().to(self.loss_sum)
                self.loss_count += 1
            phase = 0.0 if epoch < warmup else 1.0
        else:
            if not bool(self.nadir_set):
                seen = int(self.loss_count) > 0
                self.nadir.copy_(
                    self.loss_sum / int(self.loss_count) if seen else losses.detach().to(self.nadir)
                )
                self.nadir_set.fill_(True)
            nadir = self.nadir.to(losses.device, losses.dtype)
            total = stch_loss(losses, nadir, float(self.params.mu), lam)
            phase = 2.0
        inputs.scale(total).backward()
        return {"loss": detach_float(total), "stch/phase": phase}
