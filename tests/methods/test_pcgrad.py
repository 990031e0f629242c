"""PCGrad: golden value, properties, seeded order, end-to-end through ``backward``, validation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlbench.methods.pcgrad import PCGrad, PCGradParams, pcgrad_combine, pcgrad_weights, step_generator
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    TWO_TASK_INPUTS,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_non_conflicting,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
)


def fn(grads: Tensor) -> Tensor:
    return pcgrad_combine(grads, step_generator(0, 0))


def test_golden_two_tasks() -> None:
    # g1·g2 = −1: g1' = g1 + ½g2 = (½, ½), g2' = g2 + g1 = (0, 1); the sum is (½, 3/2).
    assert_golden(fn, [[1.0, 0.0], [-1.0, 1.0]], [0.5, 1.5])


def test_golden_three_tasks() -> None:
    # g1 = (1,0,0), g2 = (0,1,0), g3 = (−1,0,1): only g1 and g3 conflict (g1·g3 = −1), so every order
    # gives g1' = g1 + ½g3 = (½,0,½), g2' = g2, g3' = g3 + g1 = (0,0,1); the sum is (½, 1, 3/2).
    assert_golden(fn, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], [0.5, 1.0, 1.5])


def test_order_matters_with_three_tasks() -> None:
    # g1 = (1,0), g2 = (0,1), g3 = (−1,−1): g1' is (½,−½) if g2 is visited first and (½,0) if g3 is,
    # because each projection uses the original g_j; g3' = 0 in both orders.
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    allowed = {
        (a1 + a2, b1 + b2) for a1, b1 in [(0.5, -0.5), (0.5, 0.0)] for b2, a2 in [(0.5, -0.5), (0.5, 0.0)]
    }
    seen = {
        tuple(round(v, 9) for v in pcgrad_combine(grads, step_generator(0, k)).tolist()) for k in range(20)
    }
    assert seen <= allowed and len(seen) > 1, seen


def test_no_conflict_is_the_plain_sum() -> None:
    grads = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(fn(grads), grads.sum(0))


def test_properties() -> None:
    assert_shape_and_finite(fn)
    assert_scaling_behaviour(fn)
    assert_handles_zero_and_rank_deficient(fn)
    assert_in_row_span(fn)
    # With two tasks the order does not matter, and the result never conflicts with either task.
    assert_permutation_invariant(fn, TWO_TASK_INPUTS)
    assert_non_conflicting(fn, TWO_TASK_INPUTS)


def test_two_task_weights_in_closed_form() -> None:
    grads = STANDARD_INPUTS["conflicting_pair_2x3"]
    gram = grads @ grads.T
    w = pcgrad_weights(gram)
    # g1' = g1 − (a/‖g2‖²)g2 and g2' = g2 − (a/‖g1‖²)g1 with a = g1·g2 < 0, so the weights of the
    # sum are w = (1 − a/‖g1‖², 1 − a/‖g2‖²).
    a = float(gram[0, 1])
    torch.testing.assert_close(w, torch.tensor([1 - a / gram[0, 0], 1 - a / gram[1, 1]], dtype=torch.float64))


def test_order_is_seeded_by_seed_and_step() -> None:
    grads = STANDARD_INPUTS["wide_5x20"]
    runs = {(s, k): pcgrad_combine(grads, step_generator(s, k)) for s in (0, 1) for k in range(4)}
    torch.testing.assert_close(runs[(0, 2)], pcgrad_combine(grads, step_generator(0, 2)))
    distinct = {tuple(v.round(decimals=8).tolist()) for v in runs.values()}
    assert len(distinct) > 1, "the projection order never changes with the seed or the step"


def test_end_to_end_uses_the_step_order() -> None:
    method = PCGrad(("a", "b", "c"), PCGradParams(seed=3))
    logs = assert_end_to_end(method, lambda g: pcgrad_combine(g, step_generator(3, 0)))
    assert {"weight/a", "weight/b", "weight/c", "loss"} <= set(logs) and "cos/a-b" not in logs
    logs = assert_end_to_end(method, lambda g: pcgrad_combine(g, step_generator(3, 0)), diagnostics=True)
    assert "cos/a-b" in logs  # cosines only on diagnostic steps


def test_backward_takes_the_order_from_the_step_context() -> None:
    """The step reaches the order through the explicit StepContext (no attribute set by backward)."""
    from mtlbench.api.gradients import StepContext

    grads = STANDARD_INPUTS["wide_5x20"]
    method = PCGrad(tuple("abcde"), PCGradParams(seed=1))
    for step in range(4):
        got, _ = method.aggregate(grads, StepContext(method.task_names, step))
        torch.testing.assert_close(got, pcgrad_combine(grads, step_generator(1, step)))


def test_end_to_end_two_tasks() -> None:
    assert_end_to_end(PCGrad(("a", "b")), lambda g: pcgrad_combine(g))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ValueError, match=r"Parameter `seed` .*Found `seed = "):
        PCGrad(("a", "b"), PCGradParams(seed=seed))  # type: ignore[arg-type]


def test_search_space_is_empty() -> None:
    assert PCGrad.search_space(object()) == {}
