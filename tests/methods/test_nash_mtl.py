"""Nash-MTL: the defining equation, weights that move, loud failures, state, torchjd parity."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mtlbench.methods.nash_mtl import NashMTL, NashMTLParams, NashSolverError, nash_residual, nash_weights
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_close_relative,
    assert_end_to_end,
    assert_handles_zero_and_rank_deficient,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
    conflicting_pair,
    random_full_rank,
)

FULL_RANK = {k: v for k, v in STANDARD_INPUTS.items() if k not in ("rank_deficient_4x6_r2", "zero_row_3x5")}


def combine(grads: torch.Tensor) -> torch.Tensor:
    """A fresh method per call (no warm start), clipping off; a solver failure fails the test (the
    counted ridge fallback for Pareto-stationary inputs is allowed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "Nash-MTL solver", RuntimeWarning)
        return NashMTL(list("abcde"[: grads.shape[0]]), NashMTLParams(max_norm=math.inf)).combine(grads)[0]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_defining_equation_on_random_full_rank_grams(seed: int, n_tasks: int) -> None:
    """(G Gᵀ) α = 1/α elementwise: max_t |α_t (Mα)_t − 1| <= 1e-8 with α > 0."""
    grads = random_full_rank(n_tasks, 3 * n_tasks, seed=seed) * 10.0 ** (seed - 2)
    gram = grads @ grads.T
    alpha = nash_weights(gram)
    assert (alpha > 0).all()
    assert nash_residual(gram, alpha) <= 1e-8
    assert torch.allclose(gram @ alpha, 1 / alpha, rtol=1e-8)


def test_weights_move_away_from_one_on_conflicting_gradients() -> None:
    """A solver that silently leaves α = 1 turns Nash-MTL into equal weighting: this must fail."""
    grads = conflicting_pair()
    alpha = nash_weights(grads @ grads.T)
    assert (alpha - 1).abs().max() > 0.3, f"weights did not move: {alpha}"
    assert nash_residual(grads @ grads.T, alpha) <= 1e-8
    method = NashMTL(["a", "b"])
    update, logs = method.combine(grads)
    assert logs["nash/solver_failures"] == 0.0
    assert abs(logs["weight/a"] - 1) > 0.3 and abs(logs["weight/b"] - 1) > 0.3
    equal = grads.sum(0)
    assert not torch.allclose(update / update.norm(), equal / equal.norm(), atol=1e-2)
    # The smaller gradient gets the larger weight, and no task is hurt by the update.
    assert alpha[0] > alpha[1]
    assert ((grads @ update) > 0).all()


def test_orthonormal_gradients_give_unit_weights() -> None:
    grads = torch.eye(3, 6, dtype=torch.float64)
    assert torch.allclose(nash_weights(grads @ grads.T), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_properties() -> None:
    assert_shape_and_finite(combine)
    assert_permutation_invariant(combine, FULL_RANK, rtol=1e-7)
    assert_scaling_behaviour(combine, linear=False)
    assert_handles_zero_and_rank_deficient(combine)


def test_update_is_scale_free_and_clipped() -> None:
    grads = random_full_rank(3, 7)
    reference = combine(grads)
    for s in (1e-8, 1e-3, 1e4, 1e12):
        assert_close_relative(combine(grads * s), reference, float(reference.norm()), 1e-7, f"× {s:g}")
    update, logs = NashMTL(["a", "b", "c"], NashMTLParams(max_norm=0.05)).combine(grads)
    assert float(update.norm()) == pytest.approx(0.05, rel=1e-9)
    assert logs["nash/update_norm"] == pytest.approx(float(reference.norm()), rel=1e-7)


def test_solver_failure_raises_and_is_counted_loudly() -> None:
    grads = random_full_rank(4, 9, seed=3)
    with pytest.raises(NashSolverError, match="did not converge") as info:
        nash_weights(grads @ grads.T, optim_niter=1, init=torch.full((4,), 50.0, dtype=torch.float64))
    assert info.value.residual > 1e-9
    method = NashMTL(list("abcd"), NashMTLParams(optim_niter=1))
    method.alpha.fill_(50.0)  # a poor warm start that one Newton step cannot fix
    with pytest.warns(RuntimeWarning, match="did not converge"):
        _, logs = method.combine(grads)
    assert logs["nash/solver_failures"] == 1.0
    assert int(method.solver_failures) == 1
    assert "solver_failures" in method.state_dict()


def test_zero_gradients_give_zero_update_and_keep_weights() -> None:
    method = NashMTL(["a", "b"])
    update, logs = method.combine(torch.zeros(2, 4))
    assert torch.equal(update, torch.zeros(4)) and logs["nash/degenerate"] == 1.0
    with pytest.raises(ValueError, match="undefined"):
        nash_weights(torch.zeros(2, 2))


def test_update_weights_every_reuses_alpha_and_state_is_checkpointed() -> None:
    method = NashMTL(["a", "b", "c"], NashMTLParams(update_weights_every=2))
    first, second = random_full_rank(3, 7, seed=0), random_full_rank(3, 7, seed=1)
    method.combine(first)
    alpha = method.alpha.clone()
    assert torch.allclose(alpha, nash_weights(first @ first.T))
    update, _ = method.combine(second)
    assert torch.equal(method.alpha, alpha)  # reused on the second call
    expected = second.T @ alpha
    assert torch.allclose(update, expected * min(1.0, 1.0 / float(expected.norm())))
    method.combine(second)
    assert torch.allclose(method.alpha, nash_weights(second @ second.T))  # solved again on the third
    restored = NashMTL(["a", "b", "c"], NashMTLParams(update_weights_every=2))
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.alpha, method.alpha) and int(restored.calls) == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (NashMTLParams(max_norm=0.0), "Parameter `max_norm` should be a number > 0. Found `max_norm = 0.0`."),
        (
            NashMTLParams(optim_niter=0),
            "Parameter `optim_niter` should be an integer >= 1. Found `optim_niter = 0`.",
        ),
        (NashMTLParams(update_weights_every=0), "Found `update_weights_every = 0`"),
    ],
)
def test_validation(params: NashMTLParams, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NashMTL(["a", "b"], params)


def test_search_space_suggests_max_norm() -> None:
    class Trial:
        def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
            assert name == "max_norm" and 0 < low < high and log
            return 1.0

    assert NashMTL.search_space(Trial()) == {"max_norm": 1.0}


def test_parity_with_torchjd() -> None:
    """torchjd's NashMTL (cvxpy + ECOS, the paper's convex sequence) on identical matrices.

    Conventions: a fresh torchjd aggregator per matrix (it warm-starts from its previous α) and
    clipping disabled on both sides (torchjd ``max_norm=0``, ours ``inf``). Its ECOS solution
    satisfies the defining equation only to ~1e-5, so updates agree to 1e-4 relative; the
    degenerate zero-row input (no finite solution) is left out.
    """
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    aggregation = pytest.importorskip("torchjd.aggregation")
    inputs = {**FULL_RANK, **{f"random_{s}": random_full_rank(3, 10, seed=s) for s in range(10, 13)}}
    for name, grads in inputs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = aggregation.NashMTL(n_tasks=grads.shape[0], max_norm=0.0)(grads.clone())
        ours = combine(grads.clone())
        assert_close_relative(ours, theirs, float(ours.norm()), 1e-4, name)


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    def clipped_nash_update(g: torch.Tensor) -> torch.Tensor:
        update = g.T @ nash_weights(g @ g.T)
        return update * min(1.0, 1.0 / float(update.norm()))  # max_norm = 1.0

    def alpha(g: torch.Tensor) -> torch.Tensor:
        return nash_weights(g.double() @ g.double().T)

    # official code: the heads get the gradient of Σ α_t λ_t L_t; ``unweighted``: of Σ λ_t L_t
    logs = assert_end_to_end(NashMTL(["a", "b"]), clipped_nash_update, head_weights=alpha)
    assert logs["nash/solver_failures"] == 0.0 and logs["nash/residual"] <= 1e-6
    assert logs["nash/fallbacks"] == 0.0
    assert_end_to_end(NashMTL(["a", "b"], NashMTLParams(heads="unweighted")), clipped_nash_update)


def test_no_usable_start_is_a_solver_error_not_a_crash() -> None:
    # not positive semi-definite (only rounding could produce it from real gradients): every start
    # direction has negative curvature; this once ended in an UnboundLocalError
    from mtlbench.methods.nash_mtl import NashSolverError, nash_weights

    with pytest.raises(NashSolverError, match="no usable starting point"):
        nash_weights(torch.tensor([[1.0, -2.0], [-2.0, 1.0]]))
