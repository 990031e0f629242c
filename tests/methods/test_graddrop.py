"""GradDrop: golden values, sign consistency, fixed-draw properties, torchjd parity, seeding, end to end."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlbench.api import StepContext, step_generator
from mtlbench.methods.graddrop import GradDrop, GradDropParams, graddrop_combine, sign_purity
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_close_relative,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
)
from tests.methods.new_method_helpers import parity_matrices, size

HALF = torch.full((3,), 0.5, dtype=torch.float64)


def with_draws(seed: int = 0, leak: float = 0.0):
    def fn(grads: Tensor) -> Tensor:
        uniform = torch.rand(grads.shape[1], generator=torch.Generator().manual_seed(seed), dtype=grads.dtype)
        return graddrop_combine(grads, uniform, leak)

    return fn


def test_golden() -> None:
    # columns: P = ½(1 + Σg/Σ|g|) = (¼, ½, 1). With U = ½: column 0 keeps the negative (−3), column 1
    # (P = U exactly) keeps neither sign, column 2 keeps the positive (2).
    grads = [[1.0, -1.0, 2.0], [-3.0, 1.0, 0.0]]
    assert_golden(lambda g: graddrop_combine(g, HALF), grads, [-3.0, 0.0, 2.0])
    # leak ½: dropped entries pass at half strength: (½·1 − 3, −½ + ½, 2)
    assert_golden(lambda g: graddrop_combine(g, HALF, 0.5), grads, [-2.5, 0.0, 2.0])
    # leak 1 is the plain sum
    assert_golden(lambda g: graddrop_combine(g, HALF, 1.0), grads, [-2.0, 0.0, 2.0])


def test_purity_of_an_all_zero_column_is_a_half() -> None:
    grads = torch.tensor([[0.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(sign_purity(grads), torch.tensor([0.5, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("name", list(STANDARD_INPUTS))
def test_kept_entries_share_one_sign_per_coordinate(name: str) -> None:
    grads = STANDARD_INPUTS[name]
    uniform = torch.rand(grads.shape[1], generator=torch.Generator().manual_seed(1), dtype=grads.dtype)
    out = graddrop_combine(grads, uniform)
    positive = sign_purity(grads) > uniform
    assert (out[positive] >= 0).all() and (out[~positive] <= 0).all()


def test_properties_with_fixed_draws() -> None:
    fn = with_draws(3)
    assert_shape_and_finite(fn)
    assert_scaling_behaviour(fn)
    assert_permutation_invariant(fn)
    assert_handles_zero_and_rank_deficient(fn)
    assert_shape_and_finite(with_draws(3, leak=0.3))


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd(n_tasks: int) -> None:
    """torchjd 0.18 GradDrop draws U with the global RNG: seeded identically, the draws are equal."""
    from torchjd.aggregation import GradDrop as TorchjdGradDrop

    for name, grads in parity_matrices(n_tasks).items():
        for seed, leak in [(0, 0.0), (1, 0.0), (2, 0.25)]:
            torch.manual_seed(seed)
            want = TorchjdGradDrop(leak=torch.full((n_tasks,), leak, dtype=grads.dtype))(grads)
            ours = with_draws(seed, leak)(grads)
            assert_close_relative(ours, want, size(grads), 1e-12, f"GradDrop vs torchjd on {name}")


def test_draws_depend_on_seed_and_step_only() -> None:
    grads = parity_matrices(3)["random_3x8_seed0"].float()
    results = {}
    for seed in (0, 1):
        for step in (0, 1):
            method = GradDrop(("a", "b", "c"), GradDropParams(seed=seed))
            torch.manual_seed(123 + step)  # the global RNG plays no part
            results[(seed, step)] = method.aggregate(grads, StepContext(("a", "b", "c"), step=step))[0]
    again = GradDrop(("a", "b", "c"), GradDropParams(seed=1)).aggregate(
        grads, StepContext(("a", "b", "c"), step=1)
    )
    torch.testing.assert_close(again[0], results[(1, 1)], rtol=0, atol=0)
    assert len({tuple(v.tolist()) for v in results.values()}) > 1


def test_end_to_end() -> None:
    method = GradDrop(("a", "b", "c"), GradDropParams(leak=0.1, seed=5))

    def expected(grads: Tensor) -> Tensor:
        uniform = torch.rand(grads.shape[1], generator=step_generator(5, 0), dtype=grads.dtype)
        return graddrop_combine(grads, uniform, 0.1)

    logs = assert_end_to_end(method, expected)
    assert "graddrop/positive_kept" in logs


@pytest.mark.parametrize(("field", "value"), [("leak", -0.1), ("leak", 1.1), ("leak", "0"), ("seed", 2.0)])
def test_bad_params(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        GradDrop(("a", "b"), GradDropParams(**{field: value}))  # type: ignore[arg-type]
