"""SDMGrad (single batch): golden value, torchjd parity over steps, properties, end to end, state."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.methods.sdmgrad import SDMGrad, SDMGradParams, sdmgrad_weights
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


def first_step(grads: Tensor, params: SDMGradParams = SDMGradParams()) -> Tensor:
    t = grads.shape[0]
    start = torch.full((t,), 1.0 / t, dtype=D)
    return sdmgrad_weights(grads @ grads.T, start, params)[1] @ grads


def test_golden() -> None:
    # Orthogonal rows of equal norm: A = I, w stays at (½, ½) (the step is along 𝟙 and projected back),
    # so d = G ᵀ(½ + 0.3·½)/1.3 = the mean gradient.
    assert_golden(first_step, [[2.0, 0.0], [0.0, 2.0]], [1.0, 1.0])
    # λ = 0 and one dominant direction: w moves to the smaller task (the min-norm side of the simplex)
    g = torch.tensor([[10.0, 0.0], [0.0, 1.0]], dtype=D)
    w, weights = sdmgrad_weights(
        g @ g.T, torch.full((2,), 0.5, dtype=D), SDMGradParams(lamda=0.0, n_iter=200)
    )
    assert float(w[1]) > 0.95 and torch.equal(weights, w)


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd_over_steps(n_tasks: int) -> None:
    """torchjd 0.18 SDMGradWeighting fed with the single-batch Gramian, LibMTL's lr = 5.

    torchjd (like LibMTL) divides by ``s² + 1e-8``; at gradient norms ~1 that moves the result by up
    to 2.4e-7 relative after a few steps (measured), so the matrices are scaled by 1e3, where the
    1e-8 is negligible and the two must agree to round-off.
    """
    from torchjd.aggregation import SDMGradWeighting

    params = SDMGradParams()
    for name, grads in parity_matrices(n_tasks).items():
        reference = SDMGradWeighting(lr=5.0, momentum=0.5, n_iter=20, lambda_=0.3)
        w = torch.full((n_tasks,), 1.0 / n_tasks, dtype=D)
        for k in range(4):
            gen = torch.Generator().manual_seed(k)
            gk = 1e3 * (grads + 0.5 * torch.randn(grads.shape, generator=gen, dtype=D))
            want = reference(gk @ gk.T)
            w, ours = sdmgrad_weights(gk @ gk.T, w, params)
            assert_close_relative(
                ours @ gk, want @ gk, size(gk), 1e-9, f"SDMGrad vs torchjd on {name} step {k}"
            )


def test_properties_of_the_first_step() -> None:
    assert_shape_and_finite(first_step)
    assert_scaling_behaviour(first_step)
    assert_permutation_invariant(first_step)
    assert_handles_zero_and_rank_deficient(first_step)
    assert_in_row_span(first_step)
    assert_shape_and_finite(first_step, hard_matrices())


def test_end_to_end_and_state() -> None:
    method = SDMGrad(("a", "b", "c"))
    assert_end_to_end(method, lambda g: first_step(g.double()).float())
    assert not torch.equal(method.simplex_weights, torch.full((3,), 1.0 / 3, dtype=D))


def test_checkpoint_round_trip() -> None:
    grads = parity_matrices(3)["random_3x8_seed1"]

    def advance(method: Any, k: int) -> Tensor:
        return method.combine(grads * (k + 1))[0]

    assert_checkpoint_round_trip(lambda: SDMGrad(("a", "b", "c"), SDMGradParams(lamda=0.1)), advance)


@pytest.mark.parametrize(
    ("field", "value"), [("lamda", -0.1), ("n_iter", 0), ("n_iter", 2.0), ("lr", 0.0), ("momentum", 1.0)]
)
def test_bad_params(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        SDMGrad(("a", "b"), SDMGradParams(**{field: value}))
