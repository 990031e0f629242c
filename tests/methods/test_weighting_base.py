"""The core bases: GramianWeighting (a weighting is a few lines), GradientCombination's two entry points
(``aggregate(G, ctx)`` and the older ``combine(G)``), fp16 loss scaling, heads conventions, and the
shared parameter check."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from mtlbench.api import (
    GradientCombination,
    GramianWeighting,
    StepContext,
    check_param,
    check_tasks,
    gram_matrix,
    normalised_gram,
)
from mtlbench.methods.nash_mtl import NashMTL, NashMTLParams, nash_weights
from tests.methods.grad_properties import adversarial, assert_end_to_end, independent_task_matrix, tiny_step


@dataclass(frozen=True)
class ScaledMeanParams:
    factor: float = 1.0
    heads: str = "unweighted"


class ScaledMean(GramianWeighting):
    """A complete weighting: validation and weights, nothing else."""

    Params = ScaledMeanParams

    def validate(self) -> None:
        check_param("factor", self.params.factor, low=0, low_open=True)
        check_param("heads", self.params.heads, "choice", choices=("weighted", "unweighted"))

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        t = gram.shape[0]
        return torch.full((t,), self.params.factor / t, dtype=torch.float64), {"mean/step": float(ctx.step)}


def test_a_weighting_is_its_weights() -> None:
    method = ScaledMean(("a", "b", "c"), ScaledMeanParams(factor=3.0))
    logs = assert_end_to_end(method, lambda g: g.sum(0))
    assert [logs[f"weight/{t}"] for t in "abc"] == pytest.approx([1.0, 1.0, 1.0])
    assert logs["mean/step"] == 0.0 and "cos/a-b" not in logs
    logs = assert_end_to_end(method, lambda g: g.sum(0), diagnostics=True)
    model, inputs = tiny_step(("a", "b", "c"))
    grads = independent_task_matrix(inputs, list(model.trunk.parameters()))
    cos = float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm()))
    assert logs["cos/a-b"] == pytest.approx(cos, rel=1e-5)


def test_weighted_heads_option() -> None:
    method = ScaledMean(("a", "b", "c"), ScaledMeanParams(factor=0.3, heads="weighted"))
    assert_end_to_end(method, lambda g: 0.1 * g.sum(0), head_weights=lambda g: torch.full((3,), 0.1))


def test_fp16_loss_scaling_gives_true_gradients_to_nonhomogeneous_methods() -> None:
    """Nash-MTL's α scales like 1/‖G‖: it must see the unscaled G, and .grad must carry the scale."""
    names = ("a", "b", "c")
    model, inputs = tiny_step(names)
    shared = list(model.trunk.parameters())
    grads = independent_task_matrix(inputs, shared).detach().double()
    expected = grads.T @ nash_weights(grads @ grads.T)
    inputs.scale, inputs.loss_scale = (lambda loss: loss * 1024.0), 1024.0
    NashMTL(names, NashMTLParams(max_norm=math.inf)).backward(inputs)
    got = torch.cat([p.grad.reshape(-1) for p in shared]).double() / 1024.0
    assert float((got - expected).norm() / expected.norm()) <= 1e-5


def test_both_entry_points_work_and_one_is_required() -> None:
    class OldStyle(GradientCombination):  # written against combine(G) only
        def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
            return grads.sum(0), {"old/ok": 1.0}

    class NewStyle(GradientCombination):  # written against aggregate(G, ctx)
        def aggregate(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
            return grads.sum(0) * (ctx.step + 1), {"new/step": float(ctx.step)}

    assert assert_end_to_end(OldStyle(("a", "b")), lambda g: g.sum(0))["old/ok"] == 1.0
    assert assert_end_to_end(NewStyle(("a", "b")), lambda g: g.sum(0))["new/step"] == 0.0
    g = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(NewStyle(("a", "b")).combine(g)[0], g.sum(0))
    with pytest.raises(NotImplementedError, match="neither aggregate nor combine"):
        GradientCombination(("a", "b")).combine(g)


def test_gram_matrix_and_cosines_in_float64() -> None:
    grads = adversarial(5, 1e6, True, seed=4).float()
    gram = gram_matrix(grads)
    assert gram.dtype == torch.float64
    exact = grads.double() @ grads.double().T
    assert float((gram - exact).abs().max() / exact.abs().max()) <= 1e-14
    cos, norms, nonzero = normalised_gram(gram)
    assert bool(nonzero.all()) and float((cos.diagonal() - 1).abs().max()) == 0.0
    torch.testing.assert_close(norms, grads.double().norm(dim=1), rtol=1e-14, atol=0)
    for scale in (1e-30, 1e30):  # no under- or overflow
        torch.testing.assert_close(gram_matrix(grads.double() * scale) / scale**2, exact, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "x", "value": -1.0, "low": 0},
            "Parameter `x` should be a finite number >= 0. Found `x = -1.0`.",
        ),
        ({"name": "x", "value": math.nan}, "Parameter `x` should be a finite number. Found `x = nan`."),
        ({"name": "x", "value": True}, "Parameter `x` should be a finite number. Found `x = True`."),
        (
            {"name": "n", "value": 2.5, "kind": "int", "low": 1},
            "Parameter `n` should be an integer >= 1. Found `n = 2.5`.",
        ),
        (
            {"name": "p", "value": 1.0, "low": 0, "high": 1, "high_open": True},
            "Parameter `p` should be a finite number >= 0 and < 1. Found `p = 1.0`.",
        ),
        (
            {"name": "b", "value": "yes", "kind": "bool"},
            "Parameter `b` should be True or False. Found `b = 'yes'`.",
        ),
        (
            {"name": "m", "value": True, "kind": "choice", "choices": (0, 1)},
            "Parameter `m` should be one of 0, 1. Found `m = True`.",
        ),
        (
            {"name": "s", "value": -1, "kind": "int", "low": 0, "allow_none": True},
            "Parameter `s` should be None or an integer >= 0. Found `s = -1`.",
        ),
    ],
)
def test_check_param_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_param(**kwargs)
    assert str(info.value) == message


def test_check_param_accepts_valid_values() -> None:
    check_param("x", 0, low=0)
    check_param("x", math.inf, low=0, allow_inf=True)
    check_param("s", None, "int", allow_none=True)
    check_param("m", 2, "choice", choices=(0, 1, 2))
    with pytest.raises(ValueError, match="at least two tasks"):
        check_tasks("X", ("a",), 2)
