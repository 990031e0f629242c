"""The trainer's optimizer and per-epoch learning-rate schedule: choices, values, logging, resuming."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mtlbench.config import ConfigError, TrainConfig, resolve_config
from mtlbench.optim import build_optimizer, build_scheduler, lr_factor
from mtlbench.runner import run_experiment
from mtlbench.trainer import StopAfterEpochs, StopTraining
from tests.tiny import core_run_overrides


def test_step_schedule_halves_every_100_epochs_as_the_papers() -> None:
    tc = TrainConfig(epochs=200, lr_schedule="step", lr_step_epochs=100, lr_gamma=0.5)
    assert [lr_factor(tc, e) for e in (0, 99, 100, 199)] == [1.0, 1.0, 0.5, 0.5]
    steplr = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 3, 0.1)
    tc = TrainConfig(epochs=10, lr_schedule="step", lr_step_epochs=3, lr_gamma=0.1)
    for epoch in range(10):  # the same learning rates as torch's StepLR stepped once per epoch
        assert math.isclose(lr_factor(tc, epoch), steplr.get_last_lr()[0]), epoch
        steplr.optimizer.step()
        steplr.step()
    assert lr_factor(TrainConfig(), 13) == 1.0


def test_cosine_with_warmup() -> None:
    tc = TrainConfig(epochs=12, lr_schedule="cosine", warmup_epochs=2)
    factors = [lr_factor(tc, e) for e in range(12)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0]
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))
    assert math.isclose(factors[7], 0.5) and 0 < factors[-1] < 0.03


def test_optimizers_and_their_weight_decay() -> None:
    def one_step(optimizer: str) -> tuple[torch.optim.Optimizer, float]:
        p = nn.Parameter(torch.ones(1))
        opt = build_optimizer([p], TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5, momentum=0.8))
        p.grad = torch.zeros(1)  # only the weight decay moves the parameter
        opt.step()
        return opt, float(p.detach())

    adamw, after_adamw = one_step("adamw")
    adam, after_adam = one_step("adam")
    sgd, after_sgd = one_step("sgd")
    assert type(adamw) is torch.optim.AdamW and type(adam) is torch.optim.Adam
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.8
    assert math.isclose(after_adamw, 1 - 0.1 * 0.5, rel_tol=1e-6)  # decoupled: p ← p − lr·wd·p
    assert math.isclose(after_adam, 1 - 0.1, rel_tol=1e-5)  # L2: Adam's first step is lr·sign(wd·p)
    assert math.isclose(after_sgd, 1 - 0.1 * 0.5, rel_tol=1e-6)  # L2 on plain gradient descent


def test_scheduler_sets_the_first_epochs_rate_and_round_trips() -> None:
    tc = TrainConfig(epochs=5, lr=0.2, lr_schedule="step", lr_step_epochs=1, lr_gamma=0.5)
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], tc)
    sched = build_scheduler(opt, tc)
    assert opt.param_groups[0]["lr"] == 0.2
    opt.step()
    sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 0.1)
    fresh = build_scheduler(build_optimizer([nn.Parameter(torch.zeros(1))], tc), tc)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.last_epoch == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.optimizer=adamx", "train.optimizer"),
        ("train.lr_schedule=linear", "train.lr_schedule"),
        ("train.lr_gamma=0", "train.lr_gamma"),
        ("train.lr_gamma=1.5", "train.lr_gamma"),
        ("train.lr_step_epochs=0", "train.lr_step_epochs"),
        ("train.momentum=1", "train.momentum"),
        ("train.warmup_epochs=3", "train.warmup_epochs"),
        ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config([*core_run_overrides(tmp_path), override], method="vanilla")


def _lrs(folder: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_with_a_schedule_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """Four epochs, the rate halved after each, interrupted after two: the resumed run must continue
    the schedule (a fresh schedule would run epoch 4 at the rate of epoch 2)."""
    settings = {
        "train.epochs": 4,
        "train.optimizer": "adam",
        "train.weight_decay": 1e-5,
        "train.lr_schedule": "step",
        "train.lr_step_epochs": 1,
        "train.lr_gamma": 0.5,
    }
    straight = resolve_config(core_run_overrides(tmp_path / "a", **settings), method="vanilla")
    interrupted = resolve_config(core_run_overrides(tmp_path / "b", **settings), method="vanilla")
    first = run_experiment(straight)
    with pytest.raises(StopTraining):
        run_experiment(interrupted, callbacks=(StopAfterEpochs(2),))
    outcome = run_experiment(interrupted)
    assert outcome.resumed
    lr = straight.train.lr
    assert _lrs(first.folder.root) == _lrs(outcome.folder.root) == [lr, lr / 2, lr / 4, lr / 8]
    a = torch.load(first.folder.checkpoint_path("last"), weights_only=True)
    b = torch.load(outcome.folder.checkpoint_path("last"), weights_only=True)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
