"""CAGrad: golden values, optimality of the inner problem, conventions, end-to-end, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlbench.methods.cagrad import (
    CAGrad,
    CAGradParams,
    cagrad_combine,
    cagrad_simplex_weights,
    cagrad_weights,
)
from tests.methods.grad_properties import (
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
    conflicting_pair,
    random_full_rank,
    rank_deficient,
)


def fn(grads: Tensor) -> Tensor:
    return cagrad_combine(grads, alpha=0.4, rescale=1, scale_by_tasks=True)


def raw(grads: Tensor, alpha: float) -> Tensor:
    """d = g_0 + c·Gw/‖Gw‖ without rescaling or ×T."""
    return cagrad_combine(grads, alpha=alpha, rescale=0, scale_by_tasks=False)


def test_golden_orthogonal_equal_norms() -> None:
    # G = I: F(w) = ½ + c‖w‖ is minimal at w = (½, ½), so d = g_0 + α‖g_0‖·g_0/‖g_0‖ = (1 + α)·g_0.
    eye = [[1.0, 0.0], [0.0, 1.0]]
    assert_golden(lambda g: raw(g, 0.5), eye, [0.75, 0.75])
    assert_golden(lambda g: cagrad_combine(g, 0.5, 1, False), eye, [0.6, 0.6])  # / (1 + α²)
    assert_golden(lambda g: cagrad_combine(g, 0.5, 2, False), eye, [0.5, 0.5])  # / (1 + α)
    assert_golden(lambda g: cagrad_combine(g, 0.5, 1, True), eye, [1.2, 1.2])  # × T


def test_golden_vertex_solution() -> None:
    # G = diag(2, 1), α = ½: g_0 = (1, ½), c = α‖g_0‖ = √5/4. With w = (x, 1−x),
    # F = (3x + 1)/2 + c·√(5x² − 2x + 1) has F'(x) ≥ 3/2 − c > 0 on [0, 1], so w = (0, 1) and
    # d = g_0 + c·(0, 1) = (1, ½ + √5/4).
    assert_golden(lambda g: raw(g, 0.5), [[2.0, 0.0], [0.0, 1.0]], [1.0, 0.5 + math.sqrt(5) / 4])


def test_alpha_zero_is_the_mean_or_the_sum() -> None:
    grads = random_full_rank(3, 6)
    torch.testing.assert_close(raw(grads, 0.0), grads.mean(0))
    torch.testing.assert_close(cagrad_combine(grads, 0.0, 1, True), grads.sum(0))


def test_properties() -> None:
    assert_shape_and_finite(fn)
    assert_permutation_invariant(fn, rtol=1e-5)
    assert_scaling_behaviour(fn, rtol=1e-5)
    assert_handles_zero_and_rank_deficient(fn)
    assert_in_row_span(fn)


@pytest.mark.parametrize(
    "grads",
    [random_full_rank(3, 7), random_full_rank(5, 20, seed=4), conflicting_pair(), rank_deficient(4, 6, 3)],
    ids=["3x7", "5x20", "conflicting_pair", "rank_deficient"],
)
@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.9])
def test_optimality(grads: Tensor, alpha: float) -> None:
    """‖d − g_0‖ = α‖g_0‖, the worst task does not get worse than with g_0, and no point of the ball
    does better (d maximises min_t ⟨g_t, d⟩ over ‖d − g_0‖ ≤ α‖g_0‖)."""
    g0 = grads.mean(0)
    radius = alpha * float(g0.norm())
    d = raw(grads, alpha)
    assert abs(float((d - g0).norm()) - radius) <= 1e-6 * radius
    worst = float((grads @ d).min())
    assert worst >= float((grads @ g0).min()) - 1e-9
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(4000, grads.shape[1], generator=gen, dtype=grads.dtype)
    ball = g0 + radius * directions / directions.norm(dim=1, keepdim=True)
    scale = float(grads.norm(dim=1).max()) * radius
    assert float((ball @ grads.T).min(dim=1).values.max()) <= worst + 1e-6 * scale
    # The simplex weights minimise the inner objective better than random points of the simplex.
    gram = grads @ grads.T
    w = cagrad_simplex_weights(gram, alpha)
    c = alpha * math.sqrt(float(gram.mean()))

    def objective(v: Tensor) -> Tensor:  # rows of v are points of the simplex
        return v @ gram.mean(1) + c * torch.einsum("ni,ij,nj->n", v, gram, v).clamp_min(0).sqrt()

    concentration = torch.full((gram.shape[0],), 0.5, dtype=torch.float64)
    torch.manual_seed(0)
    samples = torch.distributions.Dirichlet(concentration).sample((2000,))
    assert float(objective(w[None])[0]) <= float(objective(samples).min()) + 1e-9 * float(gram.max())


def test_zero_and_pareto_stationary_inputs() -> None:
    assert torch.equal(fn(torch.zeros(3, 4)), torch.zeros(4))
    # g and −g: 0 lies in the hull; the mean is zero and so is the update.
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    assert torch.isfinite(fn(g)).all()
    torch.testing.assert_close(fn(g), torch.zeros(2, dtype=torch.float64))


def test_effective_weights_reproduce_the_result() -> None:
    grads = random_full_rank(3, 5, seed=9)
    a, w, logs = cagrad_weights(grads @ grads.T, 0.4, 1, True)
    assert logs["cagrad/fallback"] == 0.0 and logs["cagrad/kkt_residual"] <= 1e-9
    assert abs(float(w.sum()) - 1) < 1e-9 and torch.all(w >= 0)
    torch.testing.assert_close(a @ grads, fn(grads))


def test_end_to_end() -> None:
    logs = assert_end_to_end(CAGrad(("a", "b", "c")), fn)
    assert {"weight/a", "simplex/c", "cagrad/kkt_residual"} <= set(logs) and "cos/a-b" not in logs
    assert logs["cagrad/kkt_residual"] <= 1e-9 and logs["cagrad/fallbacks"] == 0.0
    logs = assert_end_to_end(CAGrad(("a", "b", "c")), fn, diagnostics=True)  # cosines on diagnostic steps
    assert "cos/a-b" in logs
    params = CAGradParams(alpha=0.5, rescale=0, scale_by_tasks=False)
    assert_end_to_end(CAGrad(("a", "b"), params), lambda g: raw(g, 0.5))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", -0.1),
        ("alpha", float("nan")),
        ("alpha", float("inf")),
        ("rescale", 3),
        ("rescale", True),
        ("scale_by_tasks", "yes"),
    ],
)
def test_bad_parameters(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        CAGrad(("a", "b"), CAGradParams(**{field: value}))  # type: ignore[arg-type]


def test_search_space() -> None:
    class Trial:
        def suggest_float(self, name: str, low: float, high: float) -> float:
            assert (name, low, high) == ("alpha", 0.1, 0.9)
            return 0.3

    assert CAGrad.search_space(Trial()) == {"alpha": 0.3}
