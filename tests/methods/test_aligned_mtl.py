"""Aligned-MTL: golden values, reduction to summation, alignment, degenerate inputs, torchjd parity."""

from __future__ import annotations

import math

import pytest
import torch

from mtlbench.methods.aligned_mtl import AlignedMTL, aligned_mtl_weights, balance_transformation
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_close_relative,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
    random_full_rank,
    rank_deficient,
)


def combine(grads: torch.Tensor) -> torch.Tensor:
    return grads.T @ aligned_mtl_weights(grads @ grads.T)


def test_properties() -> None:
    assert_shape_and_finite(combine)
    assert_permutation_invariant(combine)
    assert_scaling_behaviour(combine)  # α is scale-free, so d(s·G) = s·d(G)
    assert_handles_zero_and_rank_deficient(combine)
    assert_in_row_span(combine)


def test_golden_values() -> None:
    # M = diag(1, 4): λ_min = 1, B = diag(1, 1/2), α = (1, 1/2), d = (1, 1).
    assert_golden(combine, [[1.0, 0.0], [0.0, 2.0]], [1.0, 1.0])
    # M = [[1, 1], [1, 2]]: M^{-1/2} = [[3, -1], [-1, 2]]/√5 and √λ_min = (√5 − 1)/2, so
    # α = (√5 − 1)/(2√5)·(2, 1) and d = α_1 g_1 + α_2 g_2 = (√5 − 1)/(2√5)·(3, 1).
    c = (math.sqrt(5) - 1) / (2 * math.sqrt(5))
    assert_golden(combine, [[1.0, 0.0], [1.0, 1.0]], [3 * c, c], rtol=1e-12)
    alpha = aligned_mtl_weights(torch.tensor([[1.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
    assert torch.allclose(alpha, torch.tensor([2 * c, c], dtype=torch.float64), rtol=1e-12)


def test_orthogonal_equal_norm_gradients_are_summed() -> None:
    q, _ = torch.linalg.qr(torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    grads = 2.5 * q.T  # four orthogonal rows of norm 2.5
    assert torch.allclose(
        balance_transformation(grads @ grads.T), torch.eye(4, dtype=torch.float64), atol=1e-12
    )
    assert_close_relative(combine(grads), grads.sum(0), 2.5, 1e-12, "orthogonal rows")


@pytest.mark.parametrize(
    "grads",
    [random_full_rank(3, 7), random_full_rank(5, 20, seed=4), rank_deficient(), rank_deficient(3, 6, 1)],
)
def test_transformed_gradients_have_condition_number_one(grads: torch.Tensor) -> None:
    gram = grads @ grads.T
    b = balance_transformation(gram)
    singular = torch.linalg.svdvals(b @ grads)
    kept = singular[singular > singular.max() * 1e-6]
    assert len(kept) == torch.linalg.matrix_rank(grads)
    assert float(kept.max() / kept.min()) == pytest.approx(1.0, abs=1e-8)
    eigenvalues = torch.linalg.eigvalsh(gram)
    smallest_kept = eigenvalues[eigenvalues > eigenvalues.max() * 3 * torch.finfo(gram.dtype).eps].min()
    assert float(kept[0]) == pytest.approx(math.sqrt(float(smallest_kept)), rel=1e-8)


def test_zero_input_is_finite_and_zero() -> None:
    zero = torch.zeros(3, 5, dtype=torch.float64)
    assert torch.equal(aligned_mtl_weights(zero @ zero.T), torch.ones(3, dtype=torch.float64))
    assert torch.equal(combine(zero), torch.zeros(5, dtype=torch.float64))


def test_method_combine_matches_pure_function_and_logs_weights() -> None:
    grads = random_full_rank(3, 7).float()
    method = AlignedMTL(["a", "b", "c"])
    update, logs = method.combine(grads)
    assert torch.allclose(update, combine(grads), rtol=1e-6)
    assert set(logs) == {"weight/a", "weight/b", "weight/c"}


def test_parity_with_torchjd() -> None:
    """torchjd's AlignedMTL weighs by B𝟙/T (mean preference vector); ours by B𝟙 (a sum) → factor T."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    reference = aggregation.AlignedMTL()
    for name, grads in STANDARD_INPUTS.items():
        theirs = reference(grads.clone())
        ours = combine(grads.clone())
        assert_close_relative(ours, grads.shape[0] * theirs, float(grads.norm(dim=1).max()), 1e-5, name)


def test_validation() -> None:
    with pytest.raises(ValueError, match="at least two tasks"):
        AlignedMTL(["only"])
    assert AlignedMTL.search_space(object()) == {}


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    # shared .grad = Gᵀ B𝟙 on an independently computed G; heads get the gradient of Σ λ_t L_t
    logs = assert_end_to_end(AlignedMTL(["a", "b"]), lambda g: g.T @ aligned_mtl_weights(g @ g.T))
    assert {"weight/a", "weight/b"} <= set(logs)
