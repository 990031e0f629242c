"""The common trainer's optimizer (``train.optimizer``) and per-epoch learning-rate schedule
(``train.lr_schedule``), built from :class:`~mtlbench.config.TrainConfig`.

Optimizers: ``adamw`` (decoupled weight decay), ``adam`` (``torch.optim.Adam``: weight decay as an L2
term added to the gradient, as LibMTL and the MTAN line of papers use it), ``sgd`` (with
``train.momentum``). Schedules, as a factor on ``train.lr`` for the 0-based epoch ``e`` of ``E``
(``train.epochs``), after a linear warm-up of ``W`` (``train.warmup_epochs``) epochs that run at
``lr·(e+1)/(W+1)``:

- ``constant``: 1;
- ``step``: ``lr_gamma ** (e // lr_step_epochs)`` (``torch.optim.lr_scheduler.StepLR`` stepped once
  per epoch: the papers' Adam 1e-4 halved every 100 epochs is ``step`` with 100 and 0.5);
- ``cosine``: ``(1 + cos(π·(e − W)/(E − W)))/2`` after the warm-up, never reaching 0.

The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once at the end of every epoch;
its state goes into the checkpoint with the optimizer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mtlbench.config import TrainConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "step", "cosine")


def build_optimizer(params: Iterable[nn.Parameter], tc: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.betas)
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.betas)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, weight_decay=tc.weight_decay, momentum=tc.momentum)
    raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {tc.optimizer!r}")


def lr_factor(tc: TrainConfig, epoch: int) -> float:
    """The factor on ``train.lr`` during the 0-based ``epoch``."""
    warmup = tc.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if tc.lr_schedule == "constant":
        return 1.0
    if tc.lr_schedule == "step":
        return float(tc.lr_gamma ** (epoch // tc.lr_step_epochs))
    if tc.lr_schedule == "cosine":
        span = max(tc.epochs - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))
    raise ValueError(f"train.lr_schedule must be one of {', '.join(SCHEDULES)}, got {tc.lr_schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig) -> LambdaLR:
    """A schedule stepped once per epoch; building it sets the first epoch's learning rate."""
    factor: Callable[[int], float] = lambda epoch: lr_factor(tc, epoch)  # noqa: E731
    return LambdaLR(optimizer, factor)
