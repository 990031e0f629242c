"""Exact solvers for weightings defined by a convex problem over the simplex of task weights.

MGDA's min-norm point and CAGrad's inner problem are minimised over w ∈ Δ_T. At the optimum the
KKT conditions hold on a support S (the tasks with w_t > 0); on S they are a small linear system.
:func:`solve_by_supports` tries supports from the smallest up, solves each in closed form and
returns the first whose KKT conditions hold to a *relative* tolerance (per task, against the
task's own scale ‖g_t‖·‖d‖): no absolute stopping rule, no iteration count. For T ≤
``MAX_ENUMERATED_TASKS`` this is exhaustive (2^T − 1 supports, each a T×T solve); beyond it only the
supports proposed by the caller are tried, and a failure is reported, never hidden.

Everything is done on the cosine matrix C of :func:`~mtlbench.api.weighting.normalised_gram`
(M = D C D, D = diag(‖g_t‖)): the systems M_SS x = v are solved as x = D⁻¹ C_SS⁻¹ D⁻¹ v, whose
conditioning does not depend on the spread of the gradient norms.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtlbench.api.weighting import normalised_gram

#: Exhaustive search up to this many tasks (4095 supports of ≤ 12 tasks: a few ms each).
MAX_ENUMERATED_TASKS = 12
#: Relative KKT tolerance for accepting a support (dimensionless: a cosine-sized quantity).
KKT_TOL = 1e-9
#: Eigenvalues of C below ``max eig · k · this`` are treated as zero (float64 rounding level).
SINGULAR_RTOL = 1e-13


@dataclass(frozen=True)
class SimplexSolution:
    """Weights w ∈ Δ_T, the relative KKT residual, and whether no support passed (fallback)."""

    weights: Tensor
    residual: float
    fallback: bool


def inverse_on_support(c: Tensor, n: Tensor, support: Sequence[int], rhs: Tensor) -> Tensor | None:
    """``M_SS⁻¹ rhs`` via C (``None`` if C_SS is numerically singular)."""
    idx = list(support)
    cs, ns = c[idx][:, idx], n[idx]
    lam, vec = torch.linalg.eigh(cs)
    if not float(lam.min()) > float(lam.max()) * len(idx) * SINGULAR_RTOL:
        return None
    return (vec @ ((vec.T @ (rhs / ns)) / lam)) / ns


def stationary_on_support(c: Tensor, n: Tensor, support: Sequence[int]) -> Tensor | None:
    """Weights on S with Σ w_s g_s = 0 (a Pareto-stationary support), if C_SS has one such null vector."""
    idx = list(support)
    lam, vec = torch.linalg.eigh(c[idx][:, idx])
    if len(idx) < 2 or not float(lam[0]) <= float(lam.max()) * len(idx) * SINGULAR_RTOL:
        return None
    if len(idx) > 2 and float(lam[1]) <= float(lam.max()) * len(idx) * SINGULAR_RTOL:
        return None  # more than one null direction: a smaller support will do
    v = vec[:, 0] * (1.0 if float(vec[:, 0].sum()) >= 0 else -1.0)
    if not bool((v > 0).all()):
        return None
    w = v / n[idx]
    return w / w.sum()


def all_supports(t: int) -> Iterable[tuple[int, ...]]:
    """Every non-empty subset of range(t), smallest first."""
    for k in range(1, t + 1):
        yield from itertools.combinations(range(t), k)


def solve_by_supports(
    t: int,
    candidate: Callable[[tuple[int, ...]], Tensor | None],
    residual: Callable[[Tensor], float],
    proposals: Sequence[tuple[int, ...]] = (),
    tol: float = KKT_TOL,
) -> SimplexSolution:
    """The first support whose closed-form ``candidate`` passes ``residual(w) <= tol``.

    ``candidate(S)`` returns full-length weights (zero off S; supports with a weight <= 0 on S are
    skipped) or ``None``; ``proposals`` are tried
    first. Then, up to ``MAX_ENUMERATED_TASKS`` tasks, every support; beyond, a local search from
    the proposals (each support's neighbours with one task more or less, at most 10·T tried).
    Without a passing support the candidate with the smallest residual is returned and
    ``fallback`` is set (the caller counts and logs it).
    """
    supports: Iterable[tuple[int, ...]] = proposals
    if t <= MAX_ENUMERATED_TASKS:
        supports = itertools.chain(proposals, all_supports(t))
    else:
        supports = _neighbourhood(t, proposals, 10 * t)
    best: tuple[float, Tensor] | None = None
    for support in supports:
        w = candidate(tuple(support))
        if w is None or not bool(torch.isfinite(w).all()) or not bool((w[list(support)] > 0).all()):
            continue
        r = residual(w)
        if r <= tol:
            return SimplexSolution(w, r, False)
        if best is None or r < best[0]:
            best = (r, w)
    if best is None:
        return SimplexSolution(torch.full((t,), 1.0 / t, dtype=torch.float64), math.inf, True)
    return SimplexSolution(best[1], best[0], True)


def _neighbourhood(t: int, proposals: Sequence[tuple[int, ...]], limit: int) -> Iterable[tuple[int, ...]]:
    """The proposals, then breadth-first their neighbours (one task added or removed), ``limit`` in all."""
    queue = [tuple(sorted(p)) for p in proposals]
    seen: set[tuple[int, ...]] = set()
    while queue and len(seen) < limit:
        support = queue.pop(0)
        if support in seen or not support:
            continue
        seen.add(support)
        yield support
        queue.extend(tuple(x for x in support if x != i) for i in support)
        queue.extend(tuple(sorted((*support, j))) for j in range(t) if j not in support)


def kkt_residual(w: Tensor, violation: Tensor) -> float:
    """max of |violation| on the support of w and of its positive part elsewhere."""
    return float(torch.where(w > 0, violation.abs(), violation.clamp_min(0)).max())


def min_norm_residual(c: Tensor, n: Tensor, w: Tensor) -> float:
    """Relative KKT residual of w for min ‖Gᵀw‖² over Δ_T, with d = Gᵀw:

    max_t of (‖d‖² − ⟨g_t, d⟩)⁺ / (‖g_t‖·‖d‖), and |·| of the same on the support (0 if d = 0).
    """
    beta = n * w
    proj = c @ beta  # ⟨u_t, d⟩ with u_t = g_t/‖g_t‖
    d2 = float(beta @ proj)
    scale = float(beta.abs().sum())
    if d2 <= (KKT_TOL * scale) ** 2:
        return 0.0
    d = math.sqrt(d2)
    gap = (d2 / n - proj) / d
    gap = torch.where(w > 0, gap.abs(), gap.clamp_min(0))
    return float(gap.max())


def _line_minimum(objective: Callable[[Tensor], float], w: Tensor, direction: Tensor, limit: float) -> float:
    """argmin over γ ∈ [0, limit] of a convex ``objective(w + γ·direction)`` (golden section)."""
    ratio, lo, hi = (math.sqrt(5) - 1) / 2, 0.0, limit
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if objective(w + a * direction) <= objective(w + b * direction):
            hi = b
        else:
            lo = a
    return 0.5 * (lo + hi)


def active_set_support(
    start: int,
    affine: Callable[[list[int]], Tensor | None],
    objective: Callable[[Tensor], float],
    violation: Callable[[Tensor], Tensor],
    t: int,
    max_iterations: int | None = None,
) -> tuple[int, ...]:
    """The support of the minimiser of a convex objective over Δ_T by a primal active-set method.

    ``affine(S)`` is the minimiser over the affine hull of S (full-length, possibly negative, or
    ``None`` if unbounded or singular there); ``violation(w)`` the signed relative KKT violation
    per task (positive: the task's weight should grow). Each iteration either adds the most
    violating task, or rebalances the support: it moves towards the affine minimiser, stopping at the
    simplex boundary and dropping tasks that reach 0 (a convex objective decreases along the way).
    Without an affine minimiser it takes a Frank–Wolfe (towards) or away step with a line search.
    Only a proposal: the caller certifies the support. At most ``max_iterations`` (4T + 10) steps.
    """
    w = torch.zeros(t, dtype=torch.float64)
    w[start] = 1.0
    for _ in range(4 * t + 10 if max_iterations is None else max_iterations):
        score = violation(w)
        inside = w > 0
        entering = torch.where(inside, torch.full_like(score, -math.inf), score)
        j = int(torch.argmax(entering))
        imbalance = float(score[inside].abs().max())
        if max(float(entering[j]), imbalance) <= KKT_TOL:
            break
        support = torch.nonzero(inside).flatten().tolist()
        if float(entering[j]) >= imbalance:
            support.append(j)
        v = affine(support)
        if v is not None and bool((v[support] > 0).all()):
            w = v
        elif v is not None:  # towards the affine minimiser until a weight reaches zero
            current, target = w[support], v[support]
            falling = target <= 0
            theta = float((current[falling] / (current[falling] - target[falling])).min())
            w = (w + theta * (v - w)).clamp_min(0)
            w[w <= 1e-15 * w.max()] = 0.0
            w = w / w.sum()
        elif float(entering[j]) >= imbalance:  # Frank–Wolfe step towards task j
            direction = -w.clone()
            direction[j] += 1.0
            w = w + _line_minimum(objective, w, direction, 1.0) * direction
        else:  # away step: weight off the most over-weighted task of the support
            k = support[int(torch.argmin(score[support]))]
            direction = w.clone()
            direction[k] -= 1.0
            limit = float(w[k] / (1 - w[k])) if w[k] < 1 else 0.0
            w = (w + _line_minimum(objective, w, direction, limit) * direction).clamp_min(0)
            w = w / w.sum()
    return tuple(int(i) for i in torch.nonzero(w > 0).flatten().tolist())


def wolfe_support(c: Tensor, n: Tensor, max_iterations: int = 250) -> tuple[int, ...]:
    """The support of the min-norm point by Wolfe's (1976) active-set algorithm, on the cosines.

    Major step: add the task that violates ⟨g_t, d⟩ >= ‖d‖² most (relative to ‖g_t‖‖d‖); minor
    steps: move to the affine min-norm point of the support, stopping at the simplex boundary and
    dropping the tasks whose weight reaches zero. Finite for affinely independent supports.
    """
    t = c.shape[0]
    w = torch.zeros(t, dtype=torch.float64)
    w[int(torch.argmin(n))] = 1.0
    for _ in range(max_iterations):
        beta = n * w
        proj = c @ beta
        d2 = float(beta @ proj)
        if d2 <= (KKT_TOL * float(beta.sum())) ** 2:
            break
        violation = (d2 / n - proj) / math.sqrt(d2)
        j = int(torch.argmax(violation))
        if float(violation[j]) <= KKT_TOL or w[j] > 0:
            break
        support = [*torch.nonzero(w > 0).flatten().tolist(), j]
        for _ in range(t):  # minor cycle
            x = inverse_on_support(c, n, support, torch.ones(len(support), dtype=torch.float64))
            if x is None:
                x = stationary_on_support(c, n, support)
            if x is None:
                return tuple(sorted(support))
            v = x / x.sum()
            current = w[support]
            if bool((v > 0).all()):
                w = torch.zeros(t, dtype=torch.float64)
                w[support] = v
                break
            falling = v <= 0
            theta = float((current[falling] / (current[falling] - v[falling])).min())
            new = current + theta * (v - current)
            w = torch.zeros(t, dtype=torch.float64)
            keep = new > 1e-15
            support = [s for s, k in zip(support, keep.tolist()) if k]
            w[support] = new[keep] / new[keep].sum()
    return tuple(int(i) for i in torch.nonzero(w > 0).flatten().tolist())


def min_norm_point(
    gram: Tensor, proposals: Sequence[tuple[int, ...]] = (), max_iterations: int = 250
) -> SimplexSolution:
    """argmin_{w ∈ Δ_T} wᵀMw for the Gram matrix M (float64, CPU), certified by its KKT conditions.

    A zero gradient is itself the min-norm point (w uniform over the zero rows). The support of
    :func:`wolfe_support` is tried first (usually the answer), then ``proposals``, then (for T ≤
    ``MAX_ENUMERATED_TASKS``) every support.
    """
    t = gram.shape[0]
    c, n, nonzero = normalised_gram(gram)
    if not bool(nonzero.all()):
        w = (~nonzero).double()
        return SimplexSolution(w / w.sum(), 0.0, False)
    ones = torch.ones(t, dtype=torch.float64)

    def candidate(support: tuple[int, ...]) -> Tensor | None:
        x = inverse_on_support(c, n, support, ones[list(support)])
        if x is None:
            x = stationary_on_support(c, n, support)
        if x is None or not bool((x > 0).all()):
            return None
        w = torch.zeros(t, dtype=torch.float64)
        w[list(support)] = x / x.sum()
        return w

    proposals = (wolfe_support(c, n, max_iterations), *proposals)
    return solve_by_supports(t, candidate, lambda w: min_norm_residual(c, n, w), proposals)
