"""Exactness where solvers break: norm spreads of 1e3 and 1e6, cos = −1 + 1e-6 pairs, zero rows,
rank deficiency, T = 2…8 (:data:`ADVERSARIAL_INPUTS`).

Each solver is checked against its own optimality conditions, computed here independently from G in
float64 (not from the solver's internals), to 1e-6 relative to the scale of the quantity involved,
and against torchjd 0.18 or an extended-precision (mpmath, 50 digits) solve where one applies.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

from mtlbench.methods.aligned_mtl import balance_transformation
from mtlbench.methods.cagrad import CAGrad, CAGradParams, cagrad_combine, cagrad_solution
from mtlbench.methods.imtl import imtl_g_combine, imtl_g_weights
from mtlbench.methods.mgda import MGDA, mgda_combine, min_norm_solution
from mtlbench.methods.nash_mtl import NashMTL, NashMTLParams, nash_residual, nash_solution
from tests.methods.grad_properties import ADVERSARIAL_INPUTS, adversarial

RTOL = 1e-6
NONZERO = {k: v for k, v in ADVERSARIAL_INPUTS.items() if "zero_row" not in k}
FULL_RANK = {k: v for k, v in NONZERO.items() if "rank" not in k}


# -- IMTL-G: equal projections on the unit task gradients ------------------------------------------


def imtl_g_extended_precision(grads: Tensor) -> Tensor:
    """The paper's closed form α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹ in 50-digit arithmetic; returns Σ α_t g_t."""
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp.clone()
    mp.dps = 50
    g = [[mp.mpf(float(x)) for x in row] for row in grads.tolist()]
    units = [[x / mp.sqrt(sum(y * y for y in row)) for x in row] for row in g]
    t, p = len(g), len(g[0])
    d = mp.matrix([[g[0][k] - g[i][k] for k in range(p)] for i in range(1, t)])
    u = mp.matrix([[units[0][k] - units[i][k] for k in range(p)] for i in range(1, t)])
    lhs = (d * u.T).T  # solve α (D Uᵀ) = g_1 Uᵀ as (D Uᵀ)ᵀ αᵀ = U g_1ᵀ
    rhs = u * mp.matrix([g[0]]).T
    tail = mp.lu_solve(lhs, rhs)
    alpha = [1 - sum(tail), *list(tail)]
    out = [float(sum(alpha[i] * g[i][k] for i in range(t))) for k in range(p)]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", list(FULL_RANK))
def test_imtl_g_projections_are_equal_and_match_extended_precision(name: str) -> None:
    grads = FULL_RANK[name]
    d = imtl_g_combine(grads)
    proj = (grads / grads.norm(dim=1, keepdim=True)) @ d
    spread = float((proj - proj.mean()).abs().max() / proj.abs().mean())
    assert spread <= RTOL, f"{name}: projections {proj.tolist()} differ by {spread:.2e} relative"
    assert abs(float(imtl_g_weights(grads @ grads.T).sum()) - 1) <= 1e-12
    exact = imtl_g_extended_precision(grads)
    assert float((d - exact).norm() / exact.norm()) <= RTOL, name


def test_imtl_g_matches_torchjd_where_torchjd_is_accurate() -> None:
    """torchjd's pinv(M) keeps up to a norm spread of 1e3 (and fails at 1e6: not compared there)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    for name, grads in FULL_RANK.items():
        if "spread1e+03" in name:
            ref = aggregation.IMTLG()(grads)
            assert float((imtl_g_combine(grads) - ref).norm() / ref.norm()) <= RTOL, name


def test_imtl_g_zero_and_dependent_rows() -> None:
    grads = ADVERSARIAL_INPUTS["T4_spread1e+06_opposed_zero_row"]
    alpha = imtl_g_weights(grads @ grads.T)
    assert float(alpha[3]) == 0.0
    torch.testing.assert_close(imtl_g_combine(grads), imtl_g_combine(grads[:3]), rtol=1e-9, atol=0)
    for name in ("T5_spread1e+06_rank3", "T6_spread1e+06_opposed_rank4"):
        assert torch.isfinite(imtl_g_combine(ADVERSARIAL_INPUTS[name])).all(), name


# -- MGDA: KKT of the min-norm problem ----------------------------------------------------------------


def min_norm_kkt(grads: Tensor, w: Tensor) -> float:
    """max_t (‖d‖² − ⟨g_t, d⟩)⁺ / (‖g_t‖‖d‖) and |·| on the support, from G directly (0 if d = 0)."""
    d = w @ grads
    if float(d.norm()) <= 1e-12 * float((w.abs() * grads.norm(dim=1)).sum()):
        return 0.0
    norms = grads.norm(dim=1)
    live = norms > 0
    gap = (d @ d - grads @ d)[live] / (norms[live] * d.norm())
    return float(torch.where(w[live] > 1e-12, gap.abs(), gap.clamp_min(0)).max())


@pytest.mark.parametrize("name", list(ADVERSARIAL_INPUTS))
def test_mgda_meets_the_min_norm_kkt_conditions(name: str) -> None:
    grads = ADVERSARIAL_INPUTS[name]
    solution = min_norm_solution(grads @ grads.T)
    assert not solution.fallback and solution.residual <= 1e-9, name
    w = solution.weights
    assert bool((w >= 0).all()) and abs(float(w.sum()) - 1) <= 1e-12
    assert min_norm_kkt(grads, w) <= RTOL, f"{name}: KKT residual {min_norm_kkt(grads, w):.2e}"
    d = mgda_combine(grads)
    products = grads @ d
    slack = RTOL * grads.norm(dim=1) * d.norm()
    assert bool((products >= -slack).all()), f"{name}: the update conflicts with a task: {products.tolist()}"


@pytest.mark.parametrize("n_tasks", [14, 40])
def test_mgda_many_tasks_by_wolfes_active_set(n_tasks: int) -> None:
    """Beyond 12 tasks (no exhaustive search) Wolfe's support must pass the same check."""
    for seed, spread in [(0, 1e3), (1, 1e6)]:
        grads = adversarial(n_tasks, spread, True, seed=seed, n_params=60)
        solution = min_norm_solution(grads @ grads.T)
        assert not solution.fallback and min_norm_kkt(grads, solution.weights) <= RTOL


def test_mgda_logs_its_residual_and_no_fallback() -> None:
    grads = ADVERSARIAL_INPUTS["T8_spread1e+06_opposed"]
    _, logs = MGDA(tuple("abcdefgh")).combine(grads)
    assert logs["mgda/kkt_residual"] <= 1e-9 and logs["mgda/fallbacks"] == 0.0


# -- CAGrad: worst-task improvement over the ball, certified by the duality gap -----------------------


def cagrad_certificate(grads: Tensor, alpha: float) -> tuple[float, float, Tensor]:
    """(relative radius error, relative duality gap, d) for the un-rescaled update d.

    By weak duality F(w) = wᵀG g_0 + c‖Gᵀw‖ ≥ max_{‖d−g_0‖≤c} min_t ⟨g_t, d⟩ for every w ∈ Δ, so
    F(w) − min_t ⟨g_t, d⟩ = 0 certifies d; it is measured against ‖g_worst‖·‖d‖.
    """
    gram = grads @ grads.T
    sol, stationary = cagrad_solution(gram, alpha)
    assert not sol.fallback and not stationary
    w = sol.weights
    g0 = grads.mean(0)
    c = alpha * float(g0.norm())
    d = cagrad_combine(grads, alpha, rescale=0, scale_by_tasks=False)
    radius = abs(float((d - g0).norm()) / c - 1)
    f = float(w @ grads @ g0) + c * float((w @ grads).norm())
    products = grads @ d
    worst = int(products.argmin())
    gap = (f - float(products[worst])) / (float(grads[worst].norm()) * float(d.norm()))
    return radius, gap, d


@pytest.mark.parametrize("alpha", [0.4, 0.8])
@pytest.mark.parametrize("name", list(NONZERO))
def test_cagrad_is_certified_optimal(name: str, alpha: float) -> None:
    radius, gap, _ = cagrad_certificate(NONZERO[name], alpha)
    assert radius <= RTOL and abs(gap) <= RTOL, f"{name}: radius error {radius:.2e}, duality gap {gap:.2e}"


@pytest.mark.parametrize("alpha", [0.4, 0.8])
def test_cagrad_worst_task_is_never_below_torchjd(alpha: float) -> None:
    """torchjd's CAGrad (cvxpy/Clarabel): wherever its answer lies in the ball, ours does at least as well
    for the worst task (to 1e-6 of ‖g_worst‖‖d‖)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    try:
        aggregator = aggregation.CAGrad(c=alpha)
    except ImportError as exc:
        pytest.skip(f"torchjd CAGrad unavailable: {exc}")
    compared = 0
    for name, grads in FULL_RANK.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = aggregator(grads)
        g0 = grads.mean(0)
        if not float((theirs - g0).norm()) <= alpha * float(g0.norm()) * (1 + RTOL):
            continue  # torchjd returned a point outside the ball (d = 0, seen at α = 0.8)
        ours = cagrad_combine(grads, alpha, rescale=0, scale_by_tasks=False)
        worst = int((grads @ ours).argmin())
        slack = RTOL * float(grads[worst].norm()) * float(ours.norm())
        assert float((grads @ ours).min()) >= float((grads @ theirs).min()) - slack, name
        compared += 1
    assert compared >= 6  # torchjd returns d = 0 (outside the ball) on 9 of the 16 inputs at α = 0.8


def test_cagrad_zero_row_and_logs() -> None:
    grads = ADVERSARIAL_INPUTS["T4_spread1e+06_opposed_zero_row"]
    d = cagrad_combine(grads, 0.4, 0, False)
    g0 = grads.mean(0)
    assert abs(float((d - g0).norm()) / (0.4 * float(g0.norm())) - 1) <= RTOL
    _, logs = CAGrad(tuple("abcd"), CAGradParams()).combine(grads)
    assert logs["cagrad/fallbacks"] == 0.0 and logs["cagrad/kkt_residual"] <= 1e-9


# -- Nash-MTL: (G Gᵀ) α = 1/α --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(NONZERO))
def test_nash_solves_the_defining_equation_without_fallback(name: str) -> None:
    grads = NONZERO[name]
    gram = grads @ grads.T
    alpha, _, ridged = nash_solution(gram)
    assert not ridged, f"{name}: a finite solution exists but the ridge fallback was used"
    assert bool((alpha > 0).all())
    assert nash_residual(gram, alpha) <= RTOL, f"{name}: residual {nash_residual(gram, alpha):.2e}"


def test_nash_near_opposed_pair_in_closed_form() -> None:
    """Two unit-free gradients at cos = −1 + ε: γ_1 = γ_2 = 1/√ε, i.e. α_t = 1/(‖g_t‖√ε)."""
    grads = adversarial(2, 1e6, True, seed=3)
    alpha, _, ridged = nash_solution(grads @ grads.T)
    eps = 1 + float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm()))
    expected = 1 / (grads.norm(dim=1) * math.sqrt(eps))
    assert not ridged
    torch.testing.assert_close(alpha, expected, rtol=RTOL, atol=0)


def test_nash_fallback_is_counted_and_logged_never_silent() -> None:
    """Exactly opposed directions (Pareto-stationary: no finite α): ridge fallback, warned and counted."""
    row = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    grads = torch.stack([row, -1e-4 * row, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)])
    method = NashMTL(["a", "b", "c"], NashMTLParams(max_norm=math.inf))
    with pytest.warns(RuntimeWarning, match="ridge"):
        _, logs = method.combine(grads)
    assert logs["nash/fallbacks"] == 1.0 and int(method.fallbacks) == 1
    assert logs["nash/solver_failures"] == 0.0 and "fallbacks" in method.state_dict()
    hard = NONZERO["T8_spread1e+06_opposed"]
    _, logs = NashMTL(list("abcdefgh"), NashMTLParams(max_norm=math.inf)).combine(hard)
    assert logs["nash/fallbacks"] == 0.0 and logs["nash/residual"] <= RTOL


# -- Aligned-MTL: condition number one on the kept subspace -------------------------------------------


@pytest.mark.parametrize("name", list(FULL_RANK))
def test_aligned_mtl_balances_hard_matrices(name: str) -> None:
    """With the float64 Gram matrix the kept subspace (eigenvalues above max·T·eps, the method's own
    definition) is balanced to condition number one even for a norm spread of 1e6."""
    grads = FULL_RANK[name]
    gram = grads @ grads.T
    eigenvalues = torch.linalg.eigvalsh(gram)
    kept = eigenvalues > eigenvalues.max() * gram.shape[0] * torch.finfo(torch.float64).eps
    singular = torch.linalg.svdvals(balance_transformation(gram) @ grads)[: int(kept.sum())]
    assert float(singular.max() / singular.min()) == pytest.approx(1.0, abs=1e-4), name
    assert float(singular.min()) == pytest.approx(math.sqrt(float(eigenvalues[kept].min())), rel=1e-4)
