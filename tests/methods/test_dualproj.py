"""DualProj: golden values, the projection's optimality conditions, properties, torchjd parity, end to end."""

from __future__ import annotations

import pytest
import torch

from mtlbench.methods.dualproj import DualProj, DualProjParams, dualproj_combine, dualproj_weights
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
from tests.methods.test_upgrad import assert_projection_optimal


def test_golden() -> None:
    # g1 = (1,0), g2 = (−2,1): the sum (−1,1) conflicts with g1; its projection onto g1·x = 0 is (0,1),
    # and g2·(0,1) = 1 >= 0, so the projection onto the dual cone is (0,1).
    assert_golden(dualproj_combine, [[1.0, 0.0], [-2.0, 1.0]], [0.0, 1.0])
    # no conflict: the sum itself
    assert_golden(dualproj_combine, [[1.0, 0.0], [-1.0, 1.0]], [0.0, 1.0])
    assert_golden(lambda g: dualproj_combine(g, False), [[1.0, 1.0], [1.0, -0.5]], [1.0, 0.25])


@pytest.mark.parametrize("name", [*STANDARD_INPUTS, *hard_matrices()])
def test_projection_meets_its_optimality_conditions(name: str) -> None:
    grads = {**STANDARD_INPUTS, **hard_matrices()}[name]
    gram = grads @ grads.T
    assert_projection_optimal(gram, torch.ones(grads.shape[0], dtype=grads.dtype), dualproj_weights(gram))


def test_properties() -> None:
    assert_shape_and_finite(dualproj_combine)
    assert_scaling_behaviour(dualproj_combine)
    assert_permutation_invariant(dualproj_combine)
    assert_handles_zero_and_rank_deficient(dualproj_combine)
    assert_non_conflicting(dualproj_combine)
    assert_non_conflicting(dualproj_combine, hard_matrices())
    assert_in_row_span(dualproj_combine)


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd(n_tasks: int) -> None:
    """torchjd 0.18 DualProj (mean preference), QP regularisation off: ours/T within 1e-6."""
    pytest.importorskip("quadprog", reason="torchjd's DualProj needs quadprog (torchjd[quadprog_projector])")
    from torchjd.aggregation import DualProj as TorchjdDualProj
    from torchjd.linalg import QuadprogProjector

    reference = TorchjdDualProj(projector=QuadprogProjector(reg_eps=0.0))
    for name, grads in parity_matrices(n_tasks).items():
        ours = dualproj_combine(grads, scale_by_tasks=False)
        assert_close_relative(ours, reference(grads), size(grads), 1e-6, f"DualProj vs torchjd on {name}")
        torch.testing.assert_close(dualproj_combine(grads), n_tasks * ours)


def test_end_to_end() -> None:
    logs = assert_end_to_end(DualProj(("a", "b", "c")), dualproj_combine)
    assert {"weight/a", "weight/b", "weight/c", "loss"} <= set(logs)
    assert_end_to_end(DualProj(("a", "b"), DualProjParams(False)), lambda g: dualproj_combine(g, False))


def test_bad_scale_by_tasks() -> None:
    with pytest.raises(ValueError, match=r"Parameter `scale_by_tasks` .*Found `scale_by_tasks = 0`"):
        DualProj(("a", "b"), DualProjParams(scale_by_tasks=0))  # type: ignore[arg-type]
