"""FairGrad: closed-form golden values, the defining equation, properties, torchjd parity, end to end."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlbench.methods.fairgrad import FairGrad, FairGradParams, fairgrad_combine, fairgrad_weights
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
    independent_task_matrix,
    tiny_step,
)
from tests.methods.new_method_helpers import hard_matrices, parity_matrices, size

ALPHAS = (0.5, 1.0, 2.0, 5.0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_golden_orthogonal(alpha: float) -> None:
    # Orthogonal rows of norms a_t: a_t² w_t = w_t^{−1/α}, so w_t = a_t^{−2α/(1+α)}.
    a1, a2 = 2.0, 0.5
    w1, w2 = a1 ** (-2 * alpha / (1 + alpha)), a2 ** (-2 * alpha / (1 + alpha))
    assert_golden(lambda g: fairgrad_combine(g, alpha), [[a1, 0.0], [0.0, a2]], [w1 * a1, w2 * a2], rtol=1e-8)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("name", [*STANDARD_INPUTS, *hard_matrices()])
def test_weights_solve_the_defining_equation(alpha: float, name: str) -> None:
    grads = {**STANDARD_INPUTS, **hard_matrices()}[name]
    gram = grads @ grads.T
    w, converged = fairgrad_weights(gram, alpha)
    assert converged
    live = gram.diagonal() > 0
    lhs, rhs = (gram @ w)[live], w[live] ** (-1.0 / alpha)
    assert float(((lhs - rhs) / rhs).abs().max()) < 1e-6, (lhs, rhs)
    assert (w[live] > 0).all() and (w[~live] == 0).all()


def test_properties() -> None:
    for alpha in (0.5, 2.0):
        fn = lambda g, a=alpha: fairgrad_combine(g, a)  # noqa: E731
        assert_shape_and_finite(fn)
        assert_scaling_behaviour(fn, linear=False)
        assert_permutation_invariant(fn)
        assert_handles_zero_and_rank_deficient(fn)
        assert_non_conflicting(fn)  # ⟨g_t, d⟩ = (G Gᵀ w)_t = w_t^{−1/α} > 0
        assert_non_conflicting(fn, hard_matrices())
        assert_in_row_span(fn)


def test_opposite_gradients_stay_finite() -> None:
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    for alpha in ALPHAS:
        w, _ = fairgrad_weights(g @ g.T, alpha)
        assert torch.isfinite(w).all() and torch.isfinite(w @ g).all()


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_torchjd(n_tasks: int, alpha: float) -> None:
    """torchjd 0.18 FairGrad (scipy least_squares from 𝟙/T): within 1e-5 relative."""
    pytest.importorskip("scipy")
    from torchjd.aggregation import FairGrad as TorchjdFairGrad

    for name, grads in parity_matrices(n_tasks).items():
        want = TorchjdFairGrad(alpha=alpha)(grads)
        assert_close_relative(fairgrad_combine(grads, alpha), want, size(grads), 1e-5, f"{name} α={alpha}")


def test_end_to_end() -> None:
    method = FairGrad(("a", "b", "c"), FairGradParams(alpha=2.0, heads="unweighted"))
    logs = assert_end_to_end(method, lambda g: _fn(g, 2.0))
    assert logs["fairgrad/unconverged"] == 0.0 and "weight/a" in logs


def test_heads_get_the_weighted_loss_by_default() -> None:
    """The official code back-propagates Σ w_t L_t through the heads (here Σ w_t λ_t L_t)."""
    names = ("a", "b", "c")
    model, inputs = tiny_step(names)
    shared, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    grads = independent_task_matrix(inputs, shared).detach().double()
    w, _ = fairgrad_weights(grads @ grads.T, 1.0)
    objective = sum(float(wt) * inputs.weights[t] * inputs.losses[t] for wt, t in zip(w, names))
    want = torch.autograd.grad(objective, heads, retain_graph=True)
    FairGrad(names).backward(inputs)
    for p, g in zip(heads, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def _fn(grads: Tensor, alpha: float) -> Tensor:
    return fairgrad_weights(grads.double() @ grads.double().T, alpha)[0].float() @ grads


@pytest.mark.parametrize("alpha", [0, -1.0, float("inf"), "1", True])
def test_bad_alpha(alpha: object) -> None:
    with pytest.raises(ValueError, match=r"Parameter `alpha` .*Found `alpha = "):
        FairGrad(("a", "b"), FairGradParams(alpha=alpha))  # type: ignore[arg-type]
