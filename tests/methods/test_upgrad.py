"""UPGrad: golden values, the projection's optimality conditions, properties, torchjd parity, end to end."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlbench.methods.upgrad import UPGrad, UPGradParams, dual_cone_weights, upgrad_combine, upgrad_weights
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_close_relative,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_non_conflicting,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
)
from tests.methods.new_method_helpers import hard_matrices, parity_matrices, size

RTOL = 1e-6


def test_golden_two_tasks() -> None:
    # g1 = (1,0), g2 = (−1,1), g1·g2 = −1: π(g1) = g1 + ½g2 = (½,½), π(g2) = g2 + g1 = (0,1).
    assert_golden(upgrad_combine, [[1.0, 0.0], [-1.0, 1.0]], [0.5, 1.5])
    assert_golden(lambda g: upgrad_combine(g, scale_by_tasks=False), [[1.0, 0.0], [-1.0, 1.0]], [0.25, 0.75])


def test_golden_without_conflict_is_the_sum() -> None:
    grads = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(upgrad_combine(grads), grads.sum(0))


def assert_projection_optimal(gram: Tensor, u: Tensor, v: Tensor, rtol: float = 1e-8) -> None:
    """KKT of min vᵀMv s.t. v >= u: feasibility, Mv >= 0 (dual feasibility), (v − u)·Mv = 0."""
    scale = float(gram.diagonal().max()) * float(v.abs().max() + u.abs().max())
    mv = gram @ v
    assert (v - u >= -rtol * float(u.abs().max() + 1)).all(), (v, u)
    assert (mv >= -rtol * scale).all(), mv
    assert abs(float((v - u) @ mv)) <= rtol * scale * float(v.abs().max() + 1), (v - u) @ mv


@pytest.mark.parametrize("name", [*STANDARD_INPUTS, *hard_matrices()])
def test_each_projection_meets_its_optimality_conditions(name: str) -> None:
    grads = {**STANDARD_INPUTS, **hard_matrices()}[name]
    gram = grads @ grads.T
    prefs = torch.eye(grads.shape[0], dtype=grads.dtype)
    for u, v in zip(prefs, dual_cone_weights(gram, prefs)):
        assert_projection_optimal(gram, u, v)


def test_properties() -> None:
    assert_shape_and_finite(upgrad_combine)
    assert_scaling_behaviour(upgrad_combine)
    assert_permutation_invariant(upgrad_combine)
    assert_handles_zero_and_rank_deficient(upgrad_combine)
    assert_non_conflicting(upgrad_combine)
    assert_non_conflicting(upgrad_combine, hard_matrices())
    assert_in_row_span(upgrad_combine)


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd(n_tasks: int) -> None:
    """torchjd 0.18 UPGrad (mean preference) with its QP regularisation off: ours/T within 1e-6."""
    pytest.importorskip("quadprog", reason="torchjd's UPGrad needs quadprog (torchjd[quadprog_projector])")
    from torchjd.aggregation import UPGrad as TorchjdUPGrad
    from torchjd.linalg import QuadprogProjector

    reference = TorchjdUPGrad(projector=QuadprogProjector(reg_eps=0.0))
    for name, grads in parity_matrices(n_tasks).items():
        ours = upgrad_combine(grads, scale_by_tasks=False)
        assert_close_relative(ours, reference(grads), size(grads), RTOL, f"UPGrad vs torchjd on {name}")
        torch.testing.assert_close(upgrad_combine(grads), n_tasks * ours)


def test_torchjd_default_regularisation_moves_the_result() -> None:
    """With its default reg_eps = 1e-4 torchjd differs by ~1e-4 relative (why parity turns it off)."""
    pytest.importorskip("quadprog")
    from torchjd.aggregation import UPGrad as TorchjdUPGrad

    grads = parity_matrices(3)["random_3x8_seed0"]
    diff = float((upgrad_combine(grads, False) - TorchjdUPGrad()(grads)).abs().max()) / size(grads)
    assert 1e-6 < diff < 1e-3, diff


def test_end_to_end() -> None:
    logs = assert_end_to_end(UPGrad(("a", "b", "c")), upgrad_combine)
    assert {"weight/a", "weight/b", "weight/c", "loss"} <= set(logs)
    assert_end_to_end(
        UPGrad(("a", "b"), UPGradParams(scale_by_tasks=False)), lambda g: upgrad_combine(g, False)
    )


def test_weights_are_positive_sums_of_projections() -> None:
    grads = STANDARD_INPUTS["full_rank_3x7"]
    w = upgrad_weights(grads @ grads.T)
    assert (w >= 1.0 - 1e-12).all()  # each v_i >= e_i and v_j >= 0, so Σ_i v_i >= 𝟙


@pytest.mark.parametrize("value", [1, "yes", None])
def test_bad_scale_by_tasks(value: object) -> None:
    with pytest.raises(ValueError, match=r"Parameter `scale_by_tasks` .*Found `scale_by_tasks = "):
        UPGrad(("a", "b"), UPGradParams(scale_by_tasks=value))  # type: ignore[arg-type]


def test_bad_heads() -> None:
    with pytest.raises(ValueError, match=r"Parameter `heads` .*Found `heads = 'all'`"):
        UPGrad(("a", "b"), UPGradParams(heads="all"))  # type: ignore[arg-type]


def test_weighted_heads_option() -> None:
    from tests.methods.grad_properties import independent_task_matrix, tiny_step

    model, inputs = tiny_step(("a", "b", "c"))
    heads = list(model.heads.parameters())
    grads = independent_task_matrix(inputs, list(model.trunk.parameters())).detach().double()
    w = upgrad_weights(grads @ grads.T)
    objective = sum(float(wt) * inputs.weights[t] * inputs.losses[t] for wt, t in zip(w, "abc"))
    want = torch.autograd.grad(objective, heads, retain_graph=True)
    UPGrad(("a", "b", "c"), UPGradParams(heads="weighted")).backward(inputs)
    for p, g in zip(heads, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
