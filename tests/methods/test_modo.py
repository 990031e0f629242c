"""MoDo (single batch): golden value, torchjd parity over steps, properties, end to end, state."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.methods.modo import MoDo, MoDoParams, modo_weights
from tests.methods.grad_properties import (
    assert_close_relative,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
)
from tests.methods.new_method_helpers import (
    assert_checkpoint_round_trip,
    hard_matrices,
    parity_matrices,
    size,
)

D = torch.float64


def first_step(grads: Tensor, gamma: float = 0.1, rho: float = 0.0) -> Tensor:
    t = grads.shape[0]
    lam = modo_weights(grads @ grads.T, torch.full((t,), 1.0 / t, dtype=D), gamma, rho)
    return lam.to(grads.dtype) @ grads


def test_golden() -> None:
    # G = diag(1, 2), γ = 0.1, ρ = 0: GGᵀλ = (½, 2); λ − 0.1·(½, 2) = (0.45, 0.3), projected by adding
    # 0.125 each: (0.575, 0.425); d = (0.575, 0.85).
    assert_golden(first_step, [[1.0, 0.0], [0.0, 2.0]], [0.575, 0.85])
    # with ρ = 1 the ridge term is the same for both tasks: the projection removes it
    assert_golden(lambda g: first_step(g, 0.1, 1.0), [[1.0, 0.0], [0.0, 2.0]], [0.575, 0.85])


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd_over_steps(n_tasks: int) -> None:
    """torchjd 0.18 MoDoWeighting fed with the single-batch Gramian (γ = 0.05, ρ = 0.1)."""
    from torchjd.aggregation import MoDoWeighting

    for name, grads in parity_matrices(n_tasks).items():
        reference = MoDoWeighting(gamma=0.05, rho=0.1)
        lam = torch.full((n_tasks,), 1.0 / n_tasks, dtype=D)
        for k in range(5):
            gk = grads + 0.5 * torch.randn(grads.shape, generator=torch.Generator().manual_seed(k), dtype=D)
            want = reference(gk @ gk.T)
            lam = modo_weights(gk @ gk.T, lam, 0.05, 0.1)
            assert_close_relative(lam @ gk, want @ gk, size(gk), 1e-12, f"MoDo vs torchjd on {name} step {k}")


def test_properties_of_the_first_step() -> None:
    assert_shape_and_finite(first_step)
    assert_scaling_behaviour(first_step, linear=False)  # γ multiplies the raw Gram matrix
    assert_permutation_invariant(first_step)
    assert_handles_zero_and_rank_deficient(first_step)
    assert_in_row_span(first_step)
    assert_shape_and_finite(first_step, hard_matrices())


def test_end_to_end_and_state() -> None:
    method = MoDo(("a", "b", "c"), MoDoParams(gamma=0.05))
    logs = assert_end_to_end(method, lambda g: first_step(g.double(), 0.05, 0.1).float())
    assert abs(sum(logs[f"weight/{t}"] for t in "abc") - 1.0) < 1e-9
    assert not torch.equal(method.task_weights, torch.full((3,), 1.0 / 3, dtype=D))


def test_checkpoint_round_trip() -> None:
    grads = parity_matrices(3)["random_3x8_seed2"]

    def advance(method: Any, k: int) -> Tensor:
        return method.combine(grads * (k + 1))[0]

    assert_checkpoint_round_trip(lambda: MoDo(("a", "b", "c"), MoDoParams(gamma=0.01)), advance)


@pytest.mark.parametrize(("field", "value"), [("gamma", 0.0), ("gamma", float("nan")), ("rho", -1.0)])
def test_bad_params(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        MoDo(("a", "b"), MoDoParams(**{field: value}))
