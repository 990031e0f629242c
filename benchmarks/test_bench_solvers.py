"""The combination step of the gradient-combining methods at T = 3 … 40 tasks.

Each benchmark times one ``aggregate`` call of a freshly built method (Gram matrix in float64, the
method's solver, ``wᵀG``) on a fixed, seeded T × 100 000 gradient matrix with conflicting rows and
task norms spread over a decade, then checks the result against the method's defining condition:

* MGDA: the KKT conditions of the min-norm point, ⟨g_t, d⟩ >= ‖d‖² with equality where w_t > 0;
* CAGrad: the first-order optimality of F(w) = wᵀM𝟙/T + c‖Gw‖ over the simplex;
* IMTL-G: equal projections of d on every unit task gradient, Σα = 1;
* Nash-MTL: the bargaining equation α_t (Mα)_t = 1;
* UPGrad: d in the dual cone (⟨g_t, d⟩ >= 0) with weights >= 1;
* Aligned-MTL: the balanced Gram matrix B M B is λ_min·I;
* PCGrad: equal to Algorithm 1 carried out on the gradient vectors themselves (same orders).

Every weighting's d must also equal Σ_t w_t g_t with its logged weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.api.gradients import GradientCombination, StepContext, step_generator
from mtlbench.methods.aligned_mtl import AlignedMTL, balance_transformation
from mtlbench.methods.cagrad import CAGrad, CAGradParams
from mtlbench.methods.imtl import IMTLG
from mtlbench.methods.mgda import MGDA
from mtlbench.methods.nash_mtl import NashMTL, NashMTLParams, nash_residual
from mtlbench.methods.pcgrad import PCGrad, PCGradParams
from mtlbench.methods.upgrad import UPGrad

TASK_COUNTS = (3, 5, 10, 20, 40)
COLUMNS = 100_000
#: Relative tolerance of the optimality checks: d is float32, the checks are evaluated in float64.
RTOL = 1e-5

METHODS: dict[str, Callable[[tuple[str, ...]], GradientCombination]] = {
    "mgda": lambda names: MGDA(names),
    "cagrad": lambda names: CAGrad(names, CAGradParams()),
    "imtl_g": lambda names: IMTLG(names),
    "nash_mtl": lambda names: NashMTL(names, NashMTLParams(max_norm=math.inf)),
    "upgrad": lambda names: UPGrad(names),
    "aligned_mtl": lambda names: AlignedMTL(names),
    "pcgrad": lambda names: PCGrad(names, PCGradParams(seed=0)),
}


def gradient_matrix(tasks: int, columns: int = COLUMNS) -> Tensor:
    """T × P float32: a common direction with random signed loadings plus noise; norms 1 … 10."""
    g = torch.Generator().manual_seed(1000 + tasks)
    common = torch.randn(columns, generator=g)
    loadings = torch.randn(tasks, 1, generator=g)
    rows = loadings * common + torch.randn(tasks, columns, generator=g)
    norms = torch.logspace(0, 1, tasks)[torch.randperm(tasks, generator=g)]
    return (rows / rows.norm(dim=1, keepdim=True) * norms[:, None]).float()


def logged(logs: dict[str, float], names: tuple[str, ...], prefix: str = "weight") -> Tensor:
    return torch.tensor([logs[f"{prefix}/{t}"] for t in names], dtype=torch.float64)


def assert_is_combination(d: Tensor, weights: Tensor, grads: Tensor) -> None:
    expected = weights @ grads.double()
    assert torch.allclose(d.double(), expected, rtol=0, atol=RTOL * float(expected.norm()))


def check_mgda(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    w = logged(logs, names)
    assert_is_combination(d, w, grads)
    assert abs(float(w.sum()) - 1) < 1e-9 and bool((w >= 0).all())
    g = grads.double()
    dd = d.double()
    inner, sq = g @ dd, float(dd @ dd)
    scale = g.norm(dim=1) * dd.norm()
    assert bool((inner >= sq - RTOL * scale).all()), "a task's gradient conflicts with the min-norm point"
    support = w > 1e-9
    assert bool(((inner - sq).abs() <= RTOL * scale)[support].all()), "KKT equality fails on the support"


def check_cagrad(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    assert_is_combination(d, logged(logs, names), grads)
    w = logged(logs, names, "simplex")
    m = grads.double() @ grads.double().T
    alpha = CAGradParams().alpha
    c = alpha * math.sqrt(float(m.mean()))
    gw = math.sqrt(float(w @ m @ w))
    gradient = m.mean(dim=1) + c * (m @ w) / gw  # ∇F(w)
    objective = float(w @ gradient)  # = F(w): F is positively homogeneous of degree 1
    scale = m.diagonal().sqrt() * (math.sqrt(float(m.mean())) + c)
    assert bool((gradient >= objective - RTOL * scale).all()), "a vertex improves CAGrad's objective"
    assert bool(((gradient - objective).abs() <= RTOL * scale)[w > 1e-9].all())


def check_imtl_g(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    alpha = logged(logs, names)
    assert_is_combination(d, alpha, grads)
    assert abs(float(alpha.sum()) - 1) < 1e-9
    g = grads.double()
    projections = (g @ d.double()) / g.norm(dim=1)
    assert float(projections.max() - projections.min()) <= RTOL * float(d.double().norm())


def check_nash_mtl(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    alpha = logged(logs, names)
    assert_is_combination(d, alpha, grads)
    assert bool((alpha > 0).all())
    assert nash_residual(grads.double() @ grads.double().T, alpha) < 1e-8


def check_upgrad(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    w = logged(logs, names)
    assert_is_combination(d, w, grads)
    assert bool((w >= 1 - 1e-9).all()), "UPGrad's weights are sums of v_i >= e_i"
    g = grads.double()
    inner = g @ d.double()
    assert bool((inner >= -RTOL * g.norm(dim=1) * d.double().norm()).all()), "d leaves the dual cone"


def check_aligned_mtl(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    alpha = logged(logs, names)
    assert_is_combination(d, alpha, grads)
    m = grads.double() @ grads.double().T
    b = balance_transformation(m)
    assert torch.allclose(alpha, b.sum(dim=1), rtol=1e-9, atol=0)
    balanced = b @ m @ b
    lam_min = float(torch.linalg.eigvalsh(m).min())
    identity = torch.eye(len(names), dtype=torch.float64)
    assert float((balanced / lam_min - identity).abs().max()) < 1e-6


def pcgrad_on_vectors(grads: Tensor, seed: int, step: int) -> Tensor:
    """Algorithm 1 of Yu et al. on the rows themselves, drawing the orders as :class:`PCGrad` does."""
    g = grads.double()
    generator = step_generator(seed, step)
    total = torch.zeros(g.shape[1], dtype=torch.float64)
    for i in range(g.shape[0]):
        projected = g[i].clone()
        for j in torch.randperm(g.shape[0], generator=generator).tolist():
            inner = float(projected @ g[j])
            if j != i and inner < 0:
                projected -= inner / float(g[j] @ g[j]) * g[j]
        total += projected
    return total


def check_pcgrad(d: Tensor, grads: Tensor, logs: dict[str, float], names: tuple[str, ...]) -> None:
    assert_is_combination(d, logged(logs, names), grads)
    expected = pcgrad_on_vectors(grads, seed=0, step=0)
    assert float((d.double() - expected).norm()) <= RTOL * float(expected.norm())


CHECKS: dict[str, Callable[[Tensor, Tensor, dict[str, float], tuple[str, ...]], None]] = {
    "mgda": check_mgda,
    "cagrad": check_cagrad,
    "imtl_g": check_imtl_g,
    "nash_mtl": check_nash_mtl,
    "upgrad": check_upgrad,
    "aligned_mtl": check_aligned_mtl,
    "pcgrad": check_pcgrad,
}


@pytest.fixture(scope="module", params=TASK_COUNTS, ids=lambda t: f"T{t}")
def grads(request: pytest.FixtureRequest) -> Tensor:
    g = gradient_matrix(request.param)
    cosines = torch.corrcoef(g.double())  # rows have mean ≈ 0: close to the cosines
    assert float(cosines.min()) < -0.1, "the benchmark matrix should have conflicting tasks"
    return g


@pytest.mark.benchmark(group="combination")
@pytest.mark.parametrize("name", list(METHODS))
def test_combination(benchmark: Any, name: str, grads: Tensor) -> None:
    names = tuple(f"t{i}" for i in range(grads.shape[0]))
    ctx = StepContext(names, step=0)

    def fresh() -> tuple[tuple[GradientCombination], dict[str, Any]]:
        return (METHODS[name](names),), {}  # no warm start (Nash-MTL) or counters carried over

    def combine(method: GradientCombination) -> tuple[Tensor, dict[str, float]]:
        return method.aggregate(grads, ctx)

    d, logs = benchmark.pedantic(combine, setup=fresh, rounds=15, warmup_rounds=1)
    assert d.shape == (grads.shape[1],) and bool(torch.isfinite(d).all())
    CHECKS[name](d, grads, logs, names)
