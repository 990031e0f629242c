"""RLAR's and Rep-MTL's kernels on a small thyroid model (three tasks, 32 px, batch 8).

Timed: the float32 representation gradients taken with ``create_graph=True``, the RLAR penalty, the
Rep-MTL penalties, the second-order ``penalised_backward`` of each, and each method's whole
``backward``. The forward pass each kernel needs is rebuilt in the (untimed) setup of every round.
Each result is checked against a computation that shares no code with the kernel: plain
``autograd.grad`` without a graph, Eq. 6 and the TSR entropy written out in float64, and the
gradient of ``Σ λ_t L_t + penalty`` taken by a single ``autograd.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from thyroid_model import ThyroidStep, build_thyroid_step
from torch import Tensor

from mtlbench.api.method import StepInputs
from mtlbench.methods.rep_mtl import RepMTL, rep_mtl_penalties_from_gradients
from mtlbench.methods.rlar import (
    RLAR,
    RLARParams,
    float32_representation_gradients,
    penalised_backward,
    rlar_penalty,
    rlar_penalty_from_gradients,
)

ROUNDS = 10
LAMBDA_ADV = 0.1


@pytest.fixture(scope="module")
def step() -> ThyroidStep:
    return build_thyroid_step(
        size=32, batch=8, widths=(8, 16, 32, 64), embedding_dim=24, classifier_hidden=16
    )


def prepared(
    step: ThyroidStep, representation: str = "bottleneck"
) -> tuple[StepInputs, list[Tensor], Tensor]:
    """A fresh forward pass: the step inputs, the task losses in task order, the probed tensor."""
    step.zero_grad()
    output, losses = step.forward()
    inputs = step.step_inputs(output, losses)
    rep = inputs.representation(representation)
    assert isinstance(rep, Tensor)
    return inputs, [losses[t] for t in step.task_names], rep


def plain_gradients(losses: list[Tensor], rep: Tensor) -> list[Tensor]:
    """∇_z L_t without a graph, float64: the reference for the create_graph kernels."""
    return [torch.autograd.grad(loss, rep, retain_graph=True)[0].double() for loss in losses]


def eq6(grads: list[Tensor]) -> float:
    """Mean |cos| over task pairs and samples (Eq. 6 without λ_adv), in float64."""
    flat = [g.flatten(1) for g in grads]
    values = []
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            for x, y in zip(flat[a], flat[b]):
                if x.abs().max() > 0 and y.abs().max() > 0:
                    values.append(abs(float(x @ y) / float(x.norm() * y.norm())))
    return sum(values) / len(values)


def tsr_reference(grads: list[Tensor], eps: float = 1e-8) -> float:
    """The TSR entropy of the channel-mean saliencies, per location, after per-sample rescaling."""
    s = torch.stack([g.flatten(2) for g in grads])  # (T, B, C, N)
    s = s / s.abs().amax(dim=(0, 2, 3), keepdim=True)
    mean_c = s.mean(dim=2).abs()
    p = mean_c / (mean_c.sum(dim=0) + eps)
    return float((-(p * torch.log(p + eps)).sum(dim=0)).mean())


def parameter_gradients(step: ThyroidStep) -> list[Tensor]:
    return [p.grad.detach().clone() for p in step.model.parameters()]  # type: ignore[union-attr]


def reference_gradients(
    step: ThyroidStep,
    penalty_of: Callable[[list[Tensor], Tensor], Tensor],
    representation: str = "bottleneck",
) -> list[Tensor]:
    """∂(Σ λ_t L_t + penalty)/∂θ by one ``autograd.grad`` on a fresh forward pass."""
    inputs, losses, rep = prepared(step, representation)
    total = inputs.weighted_sum() + penalty_of(losses, rep)
    return list(torch.autograd.grad(total, list(step.model.parameters())))


def assert_gradients_match(got: list[Tensor], expected: list[Tensor]) -> None:
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6 * float(e.abs().max() + 1e-30))


@pytest.mark.benchmark(group="representation")
def test_float32_representation_gradients(benchmark: Any, step: ThyroidStep) -> None:
    def setup() -> tuple[tuple[list[Tensor], Tensor], dict[str, Any]]:
        _, losses, rep = prepared(step)
        return (losses, rep), {}

    grads = benchmark.pedantic(float32_representation_gradients, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    _, losses, rep = prepared(step)
    expected = plain_gradients(losses, rep)
    for (got,), ref in zip(grads, expected):
        assert got.dtype == torch.float32 and got.requires_grad
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-7 * float(ref.abs().max()))


@pytest.mark.benchmark(group="representation")
def test_rlar_penalty(benchmark: Any, step: ThyroidStep) -> None:
    def setup() -> tuple[tuple[list[Tensor], Tensor], dict[str, Any]]:
        _, losses, rep = prepared(step)
        return (losses, rep), {}

    penalty, per_pair = benchmark.pedantic(rlar_penalty, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    _, losses, rep = prepared(step)
    expected = eq6(plain_gradients(losses, rep))
    assert 0 < expected < 1
    assert math.isclose(float(penalty.detach()), expected, rel_tol=1e-5)
    assert per_pair.shape == (3,)


@pytest.mark.benchmark(group="representation")
@pytest.mark.parametrize("representation", ["bottleneck", "mid"])
def test_rlar_penalised_backward(benchmark: Any, step: ThyroidStep, representation: str) -> None:
    """The second-order backward of Σ λ_t L_t + λ_adv·L_RLAR into every parameter."""

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        inputs, losses, rep = prepared(step, representation)
        grads = float32_representation_gradients(losses, rep)
        penalty = LAMBDA_ADV * rlar_penalty_from_gradients(grads)[0]
        flat = [g for levels in grads for g in levels]
        return (inputs, inputs.weighted_sum(), penalty, flat, rep, "rlar_grad_norm"), {}

    benchmark.pedantic(penalised_backward, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    got = parameter_gradients(step)
    expected = reference_gradients(
        step, lambda losses, rep: LAMBDA_ADV * rlar_penalty(losses, rep)[0], representation
    )
    assert_gradients_match(got, expected)
    plain = reference_gradients(step, lambda losses, rep: rep.new_zeros(()), representation)
    assert any(not torch.allclose(g, p) for g, p in zip(got, plain)), "the penalty changed no gradient"


@pytest.mark.benchmark(group="representation")
def test_rlar_method_backward(benchmark: Any, step: ThyroidStep) -> None:
    method = RLAR(step.task_names, RLARParams(lambda_adv=LAMBDA_ADV))

    def setup() -> tuple[tuple[StepInputs], dict[str, Any]]:
        return (prepared(step)[0],), {}

    logs = benchmark.pedantic(method.backward, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert logs["rlar_penalty"] > 0
    got = parameter_gradients(step)
    expected = reference_gradients(step, lambda losses, rep: LAMBDA_ADV * rlar_penalty(losses, rep)[0])
    assert_gradients_match(got, expected)


@pytest.mark.benchmark(group="representation")
def test_rep_mtl_penalties(benchmark: Any, step: ThyroidStep) -> None:
    def setup() -> tuple[tuple[list[Tensor]], dict[str, Any]]:
        _, losses, rep = prepared(step)
        return ([g for (g,) in float32_representation_gradients(losses, rep)],), {}

    tsr, csa, mean_pos = benchmark.pedantic(
        rep_mtl_penalties_from_gradients, setup=setup, rounds=ROUNDS, warmup_rounds=1
    )
    _, losses, rep = prepared(step)
    assert math.isclose(float(tsr.detach()), tsr_reference(plain_gradients(losses, rep)), rel_tol=1e-4)
    assert 0 <= float(tsr.detach()) <= math.log(3) + 1e-6  # an entropy over three tasks
    # InfoNCE with the positive in its own denominator is positive
    assert float(csa.detach()) > 0 and -1 <= float(mean_pos) <= 1


@pytest.mark.benchmark(group="representation")
def test_rep_mtl_method_backward(benchmark: Any, step: ThyroidStep) -> None:
    method = RepMTL(step.task_names)

    def setup() -> tuple[tuple[StepInputs], dict[str, Any]]:
        return (prepared(step)[0],), {}

    logs = benchmark.pedantic(method.backward, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert logs["rep_mtl/tsr"] > 0 and logs["rep_mtl/csa"] > 0
    got = parameter_gradients(step)

    def penalties(losses: list[Tensor], rep: Tensor) -> Tensor:
        tsr, csa, _ = rep_mtl_penalties_from_gradients(
            [g for (g,) in float32_representation_gradients(losses, rep)]
        )
        return tsr + csa

    assert_gradients_match(got, reference_gradients(step, penalties))
