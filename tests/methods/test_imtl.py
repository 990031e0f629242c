"""IMTL-G: golden value, equal projections, the paper's closed form, degenerate inputs, end-to-end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlbench.methods.imtl import IMTLG, IMTLGParams, imtl_g_combine, imtl_g_weights
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
    random_full_rank,
)


def closed_form(grads: Tensor) -> Tensor:
    """The paper's α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ α_{2:T}; returns Σ α_t g_t."""
    units = grads / grads.norm(dim=1, keepdim=True)
    d = grads[:1] - grads[1:]
    u = units[:1] - units[1:]
    tail = grads[0] @ u.T @ torch.linalg.inv(d @ u.T)
    alpha = torch.cat([1 - tail.sum().unsqueeze(0), tail])
    return alpha @ grads


def test_golden() -> None:
    # d = α g1 + (1−α) g2 = (2α−1, 1−α); u1·d = u2·d ⟺ √2(2α−1) = 2 − 3α ⟺ α = 2 − √2,
    # so d = (3 − 2√2, √2 − 1).
    assert_golden(imtl_g_combine, [[1.0, 0.0], [-1.0, 1.0]], [3 - 2 * math.sqrt(2), math.sqrt(2) - 1])


@pytest.mark.parametrize("shape", [(2, 5), (3, 7), (5, 20)])
def test_equals_the_paper_closed_form(shape: tuple[int, int]) -> None:
    grads = random_full_rank(*shape, seed=11)
    torch.testing.assert_close(imtl_g_combine(grads), closed_form(grads), rtol=1e-9, atol=1e-9)


def test_projections_on_unit_gradients_are_equal() -> None:
    for name in ("full_rank_3x7", "wide_5x20", "two_tasks_2x5", "conflicting_pair_2x3"):
        grads = STANDARD_INPUTS[name]
        d = imtl_g_combine(grads)
        proj = (grads / grads.norm(dim=1, keepdim=True)) @ d
        torch.testing.assert_close(proj, proj.mean().expand_as(proj), rtol=1e-8, atol=1e-10)
        assert abs(float(imtl_g_weights(grads @ grads.T).sum()) - 1) < 1e-10


def test_properties() -> None:
    assert_shape_and_finite(imtl_g_combine)
    assert_permutation_invariant(imtl_g_combine)
    assert_scaling_behaviour(imtl_g_combine)
    assert_handles_zero_and_rank_deficient(imtl_g_combine)
    assert_in_row_span(imtl_g_combine)


def test_zero_row_gets_zero_weight() -> None:
    grads = STANDARD_INPUTS["zero_row_3x5"]
    alpha = imtl_g_weights(grads @ grads.T)
    assert float(alpha[1]) == pytest.approx(0.0, abs=1e-12)
    # The other two tasks are balanced as if the zero task were absent.
    torch.testing.assert_close(imtl_g_combine(grads), imtl_g_combine(grads[[0, 2]]))


def test_end_to_end() -> None:
    logs = assert_end_to_end(IMTLG(("a", "b", "c")), imtl_g_combine)
    assert sum(logs[f"weight/{t}"] for t in "abc") == pytest.approx(1.0, abs=1e-5)


def test_no_parameters() -> None:
    assert IMTLG.search_space(object()) == {}
    assert IMTLG(("a", "b"), IMTLGParams()).params == IMTLGParams()
    with pytest.raises(ValueError, match="at least one task"):
        IMTLG(())
