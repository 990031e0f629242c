"""Nash-MTL (Navon et al., ICML 2022): task weights from the Nash bargaining solution.

With ``M = G Gᵀ`` (T×T Gram matrix of the shared task gradients) the bargaining weights are the
α > 0 with::

    (M α)_t = 1 / α_t        for every task t,

and the shared update is ``d = Σ_t α_t g_t = Gᵀα`` (the gradient of Σ α_t L_t), with its norm clipped
to ``max_norm``. The solution is unique and scale-free: scaling G by s scales α by 1/s and leaves d
unchanged.

Solver. α is the unique minimiser of the strictly convex ``f(α) = ½ αᵀMα − Σ_t log α_t`` (∇f = Mα − 1/α).
It is found by a sequence of convex problems, as in the paper, but each is the Newton model of f
(a convex quadratic, solved exactly) instead of the paper's linearised cone program solved by ECOS:
Newton steps, damped as for self-concordant functions so that α stays positive, at most
``optim_niter`` (default 20) of them, on ``M / ‖M‖_F`` in float64 on the host (a T×T matrix: one
transfer per step), warm-started from the previous α. The iteration stops when
``max_t |α_t (Mα)_t − 1| <= 1e-12``. This needs no extra dependency; the fixed point is the same as
the paper's (checked against torchjd's cvxpy/ECOS version in the tests).

Degenerate inputs. If a non-negative combination of the task gradients is zero (a Pareto-stationary
point, e.g. g₂ = −c·g₁, or a zero task gradient), no finite solution exists (α grows without bound
along that combination, which contributes nothing to d). The solver then re-solves with a ridge,
``M/‖M‖_F + 1e-8·I``, which keeps α finite; ``nash/residual`` in the diagnostics (of the
unregularised equation) shows when this happened. An all-zero G gives d = 0 and keeps the previous α
(``nash/degenerate`` = 1).

Failures are never silent: if the solver has not converged after ``optim_niter`` steps the pure
function raises :class:`NashSolverError`; the method then warns, counts the failure
(``nash/solver_failures`` in the diagnostics, a checkpointed buffer) and uses the last iterate
when it is finite and positive, otherwise the previous α.

Conventions: the update acts on the shared parameters only; heads receive their ordinary
gradient of Σ λ_t L_t (the official code back-propagates Σ α_t L_t into the heads too, so its heads
see α-weighted gradients). Clipping is applied to the shared update only, as in the official code.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.registry import register_method

from .gradient_combination import GradientCombination

_RIDGE = 1e-8
_RIDGE_TOL = 1e-6


class NashSolverError(RuntimeError):
    """The Nash bargaining solver did not reach its tolerance; ``last`` is its last iterate."""

    def __init__(self, message: str, last: Tensor, residual: float) -> None:
        super().__init__(message)
        self.last = last
        self.residual = residual


def nash_residual(gram: Tensor, alpha: Tensor) -> float:
    """``max_t |α_t (Mα)_t − 1|``: zero exactly at the bargaining solution (dimensionless)."""
    m = gram.double()
    a = alpha.double().to(m.device)
    return float((a * (m @ a) - 1).abs().max())


def _objective(a: Tensor, x: Tensor) -> float:
    return float(0.5 * x @ (a @ x) - torch.log(x).sum())


def _newton(a: Tensor, x: Tensor, niter: int, tol: float) -> tuple[Tensor, float]:
    """Newton's method on the self-concordant ``f(x) = ½ xᵀAx − Σ log x``; returns x, max|x(Ax) − 1|.

    With the Newton decrement λ = √(−∇fᵀΔ): while λ >= 1/4 the full step Δ is taken only if it
    stays in x > 0 and decreases f, otherwise the damped step Δ/(1+λ), which always stays inside
    and decreases f by at least λ − log(1+λ); below 1/4 full steps converge quadratically
    (Nesterov & Nemirovskii).
    """
    residual = float((x * (a @ x) - 1).abs().max())
    for _ in range(niter):
        if residual <= tol:
            break
        grad = a @ x - 1 / x
        step = -torch.linalg.solve(a + torch.diag(1 / x**2), grad)
        decrement = math.sqrt(max(float(-(grad @ step)), 0.0))
        full = x + step
        if decrement >= 0.25 and not (bool((full > 0).all()) and _objective(a, full) < _objective(a, x)):
            full = x + step / (1 + decrement)
        x = full
        residual = float((x * (a @ x) - 1).abs().max())
    return x, residual


def nash_weights(
    gram: Tensor, optim_niter: int = 20, init: Tensor | None = None, tol: float = 1e-12
) -> Tensor:
    """The α > 0 with ``(M α)_t = 1/α_t`` for the T×T Gram matrix ``M`` (same dtype and device).

    Solved on ``M/‖M‖_F`` in float64 by at most ``optim_niter`` Newton steps to ``max_t |α_t(Mα)_t − 1|
    <= tol``. If that fails (no finite solution: a non-negative combination of the gradients is
    zero), the problem is solved again with the ridge ``M/‖M‖_F + 1e-8·I`` to tolerance 1e-6 of
    the regularised equation. ``init`` (e.g. the previous α) warm-starts the first solve; the
    solution does not depend on it. Raises ``ValueError`` for a zero or non-finite ``M`` (α is
    undefined) and :class:`NashSolverError` when neither solve reaches its tolerance.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"Parameter `gram` should be a square matrix. Found shape {tuple(gram.shape)}.")
    m = gram.detach().to("cpu", torch.float64)
    m = (m + m.T) / 2
    scale = float(torch.linalg.matrix_norm(m))
    if not math.isfinite(scale) or scale == 0.0:
        raise ValueError(f"The Nash-MTL weights are undefined for a Gram matrix of norm {scale}.")
    t = m.shape[0]
    m = m / scale
    eye = torch.eye(t, dtype=torch.float64)
    candidates = [1.0 / m.diagonal().clamp_min(_RIDGE).sqrt()]
    if init is not None and bool(torch.isfinite(init).all()) and bool((init > 0).all()):
        candidates.append(init.detach().to("cpu", torch.float64))
    residual, stage_tol = math.inf, tol
    x: Tensor | None = None
    for ridge, stage_tol in ((0.0, tol), (_RIDGE, _RIDGE_TOL)):
        a = m + ridge * eye
        # Each candidate start on its ray at the optimal length √(T / vᵀAv); keep the lowest f.
        starts = [v * math.sqrt(t / float(v @ (a @ v))) for v in candidates if float(v @ (a @ v)) > 0]
        if not starts:  # every candidate is a null direction: f is unbounded below along it
            continue
        x = min(starts, key=lambda z: _objective(a, z))
        x, residual = _newton(a, x, optim_niter, stage_tol)
        if residual <= stage_tol:
            break
    if x is None:  # no candidate start had a positive curvature, even with the ridge
        nan = torch.full((t,), math.nan, device=gram.device, dtype=gram.dtype)
        raise NashSolverError("Nash-MTL solver found no usable starting point", nan, math.inf)
    alpha = (x / math.sqrt(scale)).to(device=gram.device, dtype=gram.dtype)
    if not residual <= stage_tol:
        raise NashSolverError(
            f"Nash-MTL solver did not converge in {optim_niter} iterations "
            f"(residual max|α_t(Mα)_t − 1| = {residual:.3e} > {stage_tol:.1e})",
            alpha,
            residual,
        )
    return alpha


@dataclass(frozen=True)
class NashMTLParams:
    """Nash-MTL hyper-parameters."""

    update_weights_every: int = 1
    optim_niter: int = 20
    max_norm: float = 1.0


@register_method("nash_mtl")
class NashMTL(GradientCombination):
    """Nash-MTL: shared update Σ α_t g_t with the Nash bargaining weights (M α = 1/α), norm-clipped."""

    Params = NashMTLParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("alpha", torch.ones(t, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("solver_failures", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        p = self.params
        if not (isinstance(p.update_weights_every, int) and p.update_weights_every >= 1):
            raise ValueError(
                "Parameter `update_weights_every` should be an integer >= 1. "
                f"Found `update_weights_every = {p.update_weights_every!r}`."
            )
        if not (isinstance(p.optim_niter, int) and p.optim_niter >= 1):
            raise ValueError(
                f"Parameter `optim_niter` should be an integer >= 1. Found `optim_niter = {p.optim_niter!r}`."
            )
        if not p.max_norm > 0:
            raise ValueError(f"Parameter `max_norm` should be > 0. Found `max_norm = {p.max_norm!r}`.")
        if len(self.task_names) < 2:
            raise ValueError(f"Nash-MTL needs at least two tasks, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"max_norm": trial.suggest_float("max_norm", 0.1, 10.0, log=True)}

    def _solve(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        """New α for ``gram`` (warm-started from the last one); failures warn and are counted."""
        logs: dict[str, float] = {}
        try:
            alpha = nash_weights(gram, self.params.optim_niter, init=self.alpha)
        except NashSolverError as exc:
            self.solver_failures += 1
            last = exc.last
            usable = bool(torch.isfinite(last).all() and (last > 0).all())
            warnings.warn(
                f"{exc}; using the {'last iterate' if usable else 'previous weights'} "
                f"(failure {int(self.solver_failures)})",
                RuntimeWarning,
                stacklevel=3,
            )
            alpha = last if usable else self.alpha.to(gram)
        logs["nash/residual"] = nash_residual(gram, alpha)
        return alpha, logs

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``d = Gᵀα`` with the bargaining α, then ``d ← d·min(1, max_norm/‖d‖)``."""
        gram = grads @ grads.T
        logs: dict[str, float] = {}
        update_now = int(self.calls) % self.params.update_weights_every == 0
        self.calls += 1
        degenerate = not bool(torch.isfinite(gram).all()) or float(gram.abs().max()) == 0.0
        if update_now and not degenerate:
            alpha, logs = self._solve(gram)
            self.alpha.copy_(alpha.detach().to(self.alpha))
        else:
            alpha = self.alpha.to(grads)
        update = grads.T @ alpha.to(grads)
        norm = update.norm()
        if norm > self.params.max_norm:
            update = update * (self.params.max_norm / norm)
        logs["nash/solver_failures"] = float(self.solver_failures)
        logs["nash/degenerate"] = float(degenerate)
        logs["nash/update_norm"] = float(norm)
        for name, value in zip(self.task_names, self.alpha.tolist()):
            logs[f"nash/alpha/{name}"] = value
        return update, logs
