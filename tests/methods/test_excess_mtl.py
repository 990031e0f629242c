"""ExcessMTL: hand-worked golden steps, torchjd parity over steps, end to end, checkpointing, validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.methods.excess_mtl import ExcessMTL, ExcessMTLParams, excess_risk
from tests.methods.grad_properties import independent_task_matrix, tiny_step
from tests.methods.new_method_helpers import (
    all_grads,
    assert_checkpoint_round_trip,
    expected_all_grads,
    parity_matrices,
)


def test_golden_steps() -> None:
    method = ExcessMTL(("a", "b"), ExcessMTLParams(robust_step_size=1.0))
    g1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # S = g1², E = (1/√1, 4/√4) = (1, 2) is the baseline; the weights stay 𝟙.
    torch.testing.assert_close(method.update_weights(g1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(
        method.baseline, torch.tensor([1.0, 2.0], dtype=torch.float64), rtol=1e-6, atol=0
    )
    g2 = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # S = (5, 8): E = (4/√5, 4/√8); ratios (4/√5, 2/√8); w ∝ exp(ratio), Σ w = 2.
    r1, r2 = 4 / math.sqrt(5), (4 / math.sqrt(8)) / 2
    want = torch.tensor([math.exp(r1), math.exp(r2)], dtype=torch.float64)
    torch.testing.assert_close(method.update_weights(g2), 2 * want / want.sum(), rtol=1e-6, atol=0)


def test_excess_risk_formula() -> None:
    grads = torch.tensor([[1.0, -2.0, 0.0]], dtype=torch.float64)
    sq = torch.tensor([[4.0, 4.0, 0.0]], dtype=torch.float64)
    want = 1 / math.sqrt(4 + 1e-7) + 4 / math.sqrt(4 + 1e-7)
    torch.testing.assert_close(excess_risk(grads, sq), torch.tensor([want], dtype=torch.float64))


def drift(grads: Tensor, k: int) -> Tensor:
    g = torch.Generator().manual_seed(200 + k)
    return grads * (1 + k) ** 0.5 + 0.5 * torch.randn(grads.shape, generator=g, dtype=grads.dtype)


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd_over_steps(n_tasks: int) -> None:
    """torchjd 0.18 ExcessMTLWeighting with n_warmup_steps = 1 (= LibMTL's first step): weights × T."""
    from torchjd.aggregation import ExcessMTLWeighting

    for name, grads in parity_matrices(n_tasks).items():
        reference = ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=1)
        method = ExcessMTL(tuple("abcde"[:n_tasks]), ExcessMTLParams(robust_step_size=0.5))
        for k in range(5):
            gk = drift(grads, k)
            want = n_tasks * reference(gk)
            got = method.update_weights(gk)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0, msg=f"{name} step {k}")
        assert float(method.task_weights.std()) > 0


def test_zero_baseline_is_replaced_by_the_first_non_zero_risk() -> None:
    method = ExcessMTL(("a", "b"), ExcessMTLParams(robust_step_size=1.0))
    method.update_weights(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    weights = method.update_weights(torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    assert torch.isfinite(weights).all()
    assert float(method.baseline[1]) == pytest.approx(9 / math.sqrt(9 + 1e-7))


def test_end_to_end_two_steps() -> None:
    names = ("a", "b", "c")
    method = ExcessMTL(names, ExcessMTLParams(robust_step_size=0.3))
    sq, baseline, weights = None, None, torch.ones(3, dtype=torch.float64)
    for seed in (0, 1):
        model, inputs = tiny_step(names, seed=seed)
        grads = independent_task_matrix(inputs, list(model.trunk.parameters())).detach().double()
        sq = grads**2 if sq is None else sq + grads**2
        risk = (grads**2 / torch.sqrt(sq + 1e-7)).sum(1)
        if baseline is None:
            baseline = risk
        else:
            weights = weights * torch.exp(0.3 * risk / baseline)
            weights = 3 * weights / weights.sum()
        objective = sum(float(w) * inputs.weights[t] * inputs.losses[t] for w, t in zip(weights, names))
        want = expected_all_grads(model, objective)
        logs = method.backward(inputs)
        torch.testing.assert_close(all_grads(model), want, rtol=1e-5, atol=1e-7)
        assert [logs[f"weight/{t}"] for t in names] == pytest.approx(weights.tolist(), rel=1e-5)


def test_checkpoint_round_trip() -> None:
    names = ("a", "b", "c")

    def advance(method: Any, k: int) -> Tensor:
        model, inputs = tiny_step(names, seed=k)
        method.backward(inputs)
        return all_grads(model)

    assert_checkpoint_round_trip(lambda: ExcessMTL(names, ExcessMTLParams(robust_step_size=0.5)), advance)


@pytest.mark.parametrize("value", [0.0, -1e-3, float("inf"), "0.01", True])
def test_bad_step_size(value: Any) -> None:
    with pytest.raises(ValueError, match=r"Parameter `robust_step_size` .*Found `robust_step_size = "):
        ExcessMTL(("a", "b"), ExcessMTLParams(robust_step_size=value))
