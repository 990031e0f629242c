"""ConFIG (registered as ``config``): golden value, equal cosines, properties, torchjd parity, end to end."""

from __future__ import annotations

import math

import pytest
import torch

from mtlbench.methods.config_method import ConFIG, config_combine
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

FULL_RANK = {k: v for k, v in STANDARD_INPUTS.items() if "rank_deficient" not in k and "zero" not in k}


def test_golden() -> None:
    # units e1, e2: Û⁺𝟙 = (1,1), d̂ = (1,1)/√2; length = g1·d̂ + g2·d̂ = 3/√2, so d = (3/2, 3/2).
    assert_golden(config_combine, [[1.0, 0.0], [0.0, 2.0]], [1.5, 1.5])
    # g1 = (1,0), g2 = (−1,1)/√2·2: units (1,0), (−1,1)/√2; Û⁺𝟙 solves ûᵢ·x = 1: x = (1, 1+√2).
    x = torch.tensor([1.0, 1.0 + math.sqrt(2.0)], dtype=torch.float64)
    unit = x / x.norm()
    g = torch.tensor([[1.0, 0.0], [-math.sqrt(2.0), math.sqrt(2.0)]], dtype=torch.float64)
    assert_golden(config_combine, g, ((g @ unit).sum() * unit).tolist())


@pytest.mark.parametrize("name", list(FULL_RANK))
def test_equal_cosine_with_every_task(name: str) -> None:
    grads = FULL_RANK[name]
    d = config_combine(grads)
    cosines = (grads @ d) / (grads.norm(dim=1) * d.norm())
    torch.testing.assert_close(cosines, cosines[0].expand_as(cosines), rtol=1e-9, atol=1e-12)
    assert float(cosines[0]) > 0


def test_properties() -> None:
    assert_shape_and_finite(config_combine)
    assert_scaling_behaviour(config_combine)
    assert_permutation_invariant(config_combine)
    assert_handles_zero_and_rank_deficient(config_combine)
    assert_non_conflicting(config_combine, FULL_RANK)
    assert_non_conflicting(config_combine, hard_matrices())
    assert_in_row_span(config_combine)


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_torchjd(n_tasks: int) -> None:
    from torchjd.aggregation import ConFIG as TorchjdConFIG

    for name, grads in {**parity_matrices(n_tasks), **hard_matrices()}.items():
        ours = config_combine(grads)
        assert_close_relative(ours, TorchjdConFIG()(grads), size(grads), 1e-9, f"ConFIG vs torchjd on {name}")


def test_end_to_end() -> None:
    logs = assert_end_to_end(ConFIG(("a", "b", "c")), config_combine)
    assert {"weight/a", "loss"} <= set(logs)


def test_no_hyper_parameters() -> None:
    assert ConFIG.search_space(object()) == {}
    with pytest.raises(ValueError, match="at least one task"):
        ConFIG(())
