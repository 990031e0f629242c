"""GradVac: golden values (first and second step), properties, torchjd and LibMTL parity, state, e2e."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.api import StepContext, step_generator
from mtlbench.methods.gradvac import GradVac, GradVacParams, gradvac_weights
from mtlbench.methods.pcgrad import pcgrad_combine
from tests.methods.grad_properties import (
    TWO_TASK_INPUTS,
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
from tests.methods.new_method_helpers import (
    assert_checkpoint_round_trip,
    libmtl_weighting,
    parity_matrices,
    run_libmtl,
    size,
)


def first_step(grads: Tensor, beta: float = 0.5, seed: int = 0) -> Tensor:
    t = grads.shape[0]
    targets = torch.zeros(t, t, dtype=torch.float64)
    return gradvac_weights(grads @ grads.T, targets, beta, torch.Generator().manual_seed(seed)) @ grads


def test_first_step_is_pcgrad_for_two_tasks() -> None:
    assert_golden(first_step, [[1.0, 0.0], [-1.0, 1.0]], [0.5, 1.5])
    for name, grads in TWO_TASK_INPUTS.items():
        assert_close_relative(first_step(grads), pcgrad_combine(grads), size(grads), 1e-12, name)


def test_golden_with_targets() -> None:
    # g1 = (1,0), g2 = (0,1), targets φ̂ = ½: w = (½·1 − 0)/√(1 − ¼) = 1/√3 for both, so
    # g1' = (1, 1/√3) (cos with g2 = ½, the target), g2' = (1/√3, 1); the sum is (1 + 1/√3)·(1, 1).
    grads = torch.eye(2, dtype=torch.float64)
    targets = torch.full((2, 2), 0.5, dtype=torch.float64)
    out = gradvac_weights(grads @ grads.T, targets, 0.25) @ grads
    torch.testing.assert_close(out, torch.full((2,), 1.0 + 1.0 / math.sqrt(3.0), dtype=torch.float64))
    # targets ← (1 − β)·½ + β·cos(before) = 0.75·½ + 0.25·0
    torch.testing.assert_close(targets[0, 1], torch.tensor(0.375, dtype=torch.float64))
    corrected = torch.tensor([1.0, 1.0 / math.sqrt(3.0)], dtype=torch.float64)
    assert abs(float(corrected @ grads[1] / corrected.norm()) - 0.5) < 1e-12


def test_properties_of_the_first_step() -> None:
    assert_shape_and_finite(first_step)
    assert_scaling_behaviour(first_step)
    assert_handles_zero_and_rank_deficient(first_step)
    assert_in_row_span(first_step)
    assert_permutation_invariant(first_step, TWO_TASK_INPUTS)
    assert_non_conflicting(first_step, TWO_TASK_INPUTS)


def drift(grads: Tensor, k: int) -> Tensor:
    g = torch.Generator().manual_seed(100 + k)
    return grads + 0.7 * torch.randn(grads.shape, generator=g, dtype=grads.dtype)


@pytest.mark.parametrize("n_tasks", [2, 3])
def test_matches_torchjd_over_steps(n_tasks: int) -> None:
    """torchjd 0.18 GradVac (eps = 0), same visiting orders (its global RNG seeded like our generator)."""
    from torchjd.aggregation import GradVac as TorchjdGradVac

    for name, grads in parity_matrices(n_tasks).items():
        reference = TorchjdGradVac(beta=0.3, eps=0.0)
        targets = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)
        for k in range(4):
            gk = drift(grads, k)
            torch.manual_seed(k)
            want = reference(gk)
            ours = gradvac_weights(gk @ gk.T, targets, 0.3, torch.Generator().manual_seed(k)) @ gk
            assert_close_relative(ours, want, size(gk), 1e-9, f"GradVac vs torchjd on {name} step {k}")
        assert bool((targets != 0).any())


def test_matches_libmtl_on_the_first_step() -> None:
    libmtl = libmtl_weighting()
    for name, grads in parity_matrices(2, torch.float32).items():
        got, _ = run_libmtl(libmtl, "GradVac", grads, beta=0.5)
        assert_close_relative(first_step(grads.double()).float(), got, size(grads), 1e-5, name)


def test_ema_updates_on_every_visit() -> None:
    # No conflict (cos > 0 = target): LibMTL would leave the targets at 0; the paper and torchjd update.
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    targets = torch.zeros(2, 2, dtype=torch.float64)
    gradvac_weights(grads @ grads.T, targets, 0.5)
    torch.testing.assert_close(targets[0, 1], torch.tensor(0.5 / math.sqrt(2.0), dtype=torch.float64))


def test_order_comes_from_seed_and_step() -> None:
    # the order matters here (as for PCGrad): g1' depends on whether g2 or g3 is visited first
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    method = GradVac(("a", "b", "c"), GradVacParams(seed=4))
    outs = set()
    for step in range(6):
        ctx = StepContext(("a", "b", "c"), step=step)
        torch.manual_seed(step)  # the global RNG plays no part
        a = GradVac(("a", "b", "c"), GradVacParams(seed=4)).aggregate(grads, ctx)[0]
        again = GradVac(("a", "b", "c"), GradVacParams(seed=4)).aggregate(grads, ctx)[0]
        torch.testing.assert_close(again, a, rtol=0, atol=0)
        outs.add(tuple(a.round(decimals=9).tolist()))
    assert len(outs) > 1
    assert method.targets.dtype == torch.float64


def test_checkpoint_round_trip() -> None:
    grads = parity_matrices(3)["random_3x8_seed2"]

    def advance(method: Any, k: int) -> Tensor:
        return method.aggregate(drift(grads, k), StepContext(("a", "b", "c"), step=k))[0]

    assert_checkpoint_round_trip(lambda: GradVac(("a", "b", "c"), GradVacParams(beta=0.2, seed=1)), advance)


def test_end_to_end() -> None:
    method = GradVac(("a", "b", "c"), GradVacParams(seed=3))
    logs = assert_end_to_end(method, lambda g: _expected(g, 3))
    assert {"weight/a", "loss"} <= set(logs)
    assert bool((method.targets != 0).any())


def _expected(grads: Tensor, seed: int) -> Tensor:
    t = grads.shape[0]
    targets = torch.zeros(t, t, dtype=torch.float64)
    return gradvac_weights(grads @ grads.T, targets, 0.5, step_generator(seed, 0)) @ grads


@pytest.mark.parametrize(("field", "value"), [("beta", -0.1), ("beta", 1.5), ("beta", True), ("seed", -1)])
def test_bad_params(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        GradVac(("a", "b"), GradVacParams(**{field: value}))  # type: ignore[arg-type]
