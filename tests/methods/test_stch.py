"""STCH: golden loss values, the warm-up schedule, the nadir point, end to end, checkpointing, validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.methods.stch import STCH, STCHParams, stch_loss
from tests.methods.grad_properties import tiny_step
from tests.methods.new_method_helpers import all_grads, assert_loss_side_end_to_end, expected_all_grads


def test_golden_loss() -> None:
    # L = (1, e), z = (1, 1), μ = 1: 2·log(e^0 + e^1) = 2·log(1 + e)
    losses = torch.tensor([1.0, math.e], dtype=torch.float64)
    got = stch_loss(losses, torch.ones(2, dtype=torch.float64), 1.0)
    torch.testing.assert_close(got, torch.tensor(2 * math.log(1 + math.e), dtype=torch.float64))
    # z = L: every term log(1 + 1e-20) ≈ 0, so T·μ·log T
    got = stch_loss(losses, losses.clone(), 0.5)
    torch.testing.assert_close(got, torch.tensor(2 * 0.5 * math.log(2.0), dtype=torch.float64))


def test_small_mu_approaches_the_worst_task() -> None:
    losses = torch.tensor([2.0, 5.0, 3.0], dtype=torch.float64)
    nadir = torch.tensor([1.0, 4.0, 1.0], dtype=torch.float64)
    worst = float(torch.log(losses / nadir).max())
    assert abs(float(stch_loss(losses, nadir, 1e-4)) / 3 - worst) < 1e-3


def _direct(losses: Tensor, lam: Tensor, nadir: Tensor, mu: float) -> Tensor:
    # the formula written out (exp, sum, log), not through logsumexp
    terms = lam * torch.log(losses / nadir + 1e-20) / mu
    return losses.numel() * mu * torch.log(torch.exp(terms).sum())


def advance_epoch(method: STCH, seed: int) -> None:
    _, inputs = tiny_step(method.task_names, seed=seed)
    method.backward(inputs)
    method.on_epoch_end(int(method.epoch), {})


def test_schedule_and_nadir() -> None:
    names = ("a", "b", "c")
    method = STCH(names, STCHParams(mu=0.7, warmup_epochs=1))
    # epoch 0: warm-up on Σ λ log L
    logs = assert_loss_side_end_to_end(
        method, lambda losses, w: (w * torch.log(losses + 1e-20)).sum(), seed=0
    )
    assert logs["stch/phase"] == 0.0 and int(method.loss_count) == 0
    method.on_epoch_end(0, {})
    # epoch 1 (= W): warm-up objective, losses accumulated for the nadir point
    seen = []
    for seed in (1, 2):
        _, inputs = tiny_step(names, seed=seed)
        seen.append(torch.stack([inputs.losses[t].detach() for t in names]).double())
        assert method.backward(inputs)["stch/phase"] == 1.0
    method.on_epoch_end(1, {})
    # epoch 2: STCH with z = the mean of epoch 1's losses
    nadir = (seen[0] + seen[1]) / 2
    logs = assert_loss_side_end_to_end(
        method, lambda losses, w: _direct(losses, w, nadir.float(), 0.7), seed=3
    )
    assert logs["stch/phase"] == 2.0
    torch.testing.assert_close(method.nadir, nadir)


def test_no_warmup_uses_epoch_zero_for_the_nadir() -> None:
    method = STCH(("a", "b"), STCHParams(warmup_epochs=0))
    advance_epoch(method, 0)
    model, inputs = tiny_step(("a", "b"), seed=5)
    losses = torch.stack([inputs.losses[t] for t in ("a", "b")])
    assert method.backward(inputs)["stch/phase"] == 2.0
    assert int(method.loss_count) == 1 and bool(method.nadir_set)
    assert torch.isfinite(all_grads(model)).all()
    del losses


def test_checkpoint_keeps_the_nadir_point() -> None:
    names = ("a", "b", "c")

    def make() -> STCH:
        return STCH(names, STCHParams(mu=0.3, warmup_epochs=1))

    first = make()
    for seed in range(3):
        advance_epoch(first, seed)
    second = make()
    second.load_state_dict(first.state_dict())
    grads = []
    for method in (first, second):
        model, inputs = tiny_step(names, seed=9)
        method.backward(inputs)
        grads.append(all_grads(model))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    torch.testing.assert_close(second.nadir, first.nadir)


def test_end_to_end_matches_a_direct_gradient() -> None:
    method = STCH(("a", "b", "c"), STCHParams(mu=2.0, warmup_epochs=0))
    method.nadir.copy_(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    method.nadir_set.fill_(True)
    method.epoch.fill_(1)
    model, inputs = tiny_step(("a", "b", "c"), seed=4)
    losses = torch.stack([inputs.losses[t] for t in ("a", "b", "c")])
    lam = torch.tensor([1.0, 0.5, 2.0])
    want = expected_all_grads(model, _direct(losses, lam, torch.tensor([0.5, 2.0, 1.0]), 2.0))
    method.backward(inputs)
    torch.testing.assert_close(all_grads(model), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("field", "value"),
    [("mu", 0.0), ("mu", -1.0), ("mu", float("nan")), ("warmup_epochs", -1), ("warmup_epochs", 1.5)],
)
def test_bad_params(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        STCH(("a", "b"), STCHParams(**{field: value}))
