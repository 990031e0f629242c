"""Nash-MTL (Navon et al., ICML 2022): task weights from the Nash bargaining solution.

With ``M = G Gᵀ`` (T×T Gram matrix of the shared task gradients) the bargaining weights are the
α > 0 with::

    (M α)_t = 1 / α_t        for every task t,

and the shared update is ``d = Σ_t α_t g_t = Gᵀα`` (the gradient of Σ α_t L_t), with its norm clipped
to ``max_norm``. The solution is unique and scale-free: scaling G by s scales α by 1/s and leaves d
unchanged.

Solver. Write M = D C D (D = diag(‖g_t‖), C the cosines) and α = D⁻¹γ: the equation becomes
Cγ = 1/γ, which does not depend on the norms at all (a norm spread of 1e6 makes M's condition number
1e12 but leaves C alone). γ is the unique minimiser of the strictly convex
``f(γ) = ½ γᵀCγ − Σ_t log γ_t``, found by a sequence of convex problems as in the paper, but each
is the Newton model of f (solved exactly) instead of the paper's linearised cone program solved by
ECOS: Newton steps damped as for self-concordant functions so that γ stays positive, at most
``optim_niter`` (default 20) of them, in float64, started from the best of 𝟙, C⁻¹𝟙 and the previous
α, each scaled to its optimal length. It stops when ``max_t |α_t (Mα)_t − 1| <= 1e-12``, or below the
float64 rounding floor of that residual when it is larger (near-opposed pairs: ~1e-10). The fixed
point is the paper's (checked against torchjd's cvxpy/ECOS version in the tests). Near-opposed
gradients (cos = −1 + 1e-6) have a finite solution (γ ≈ 1/√(1 − |cos|)) and get it.

Degenerate inputs. A zero task gradient has no finite α_t (it contributes nothing to d): it gets
α_t = 0 and the others are solved without it. If a non-negative combination of the other unit
gradients is exactly zero (Pareto stationarity) no finite solution exists; the solver then re-solves
with a ridge, ``C + 1e-8·I``. That is a fallback: it warns, is counted (``nash/fallbacks``) and
logged with the residual of the unregularised equation (``nash/residual``). An all-zero G gives
d = 0 and keeps the previous α (``nash/degenerate`` = 1). If neither solve converges the pure
function raises :class:`NashSolverError`; the method warns, counts it (``nash/solver_failures``)
and uses the last iterate when it is finite and positive, otherwise the previous α.

Conventions (official code: AvivNavon/nash-mtl, ``methods/weight_methods.py``): the heads receive
the gradient of Σ α_t λ_t L_t (``heads="weighted"``, the official ``weighted_loss.backward()``;
``unweighted`` gives them Σ λ_t L_t); the norm clipping acts on the shared update only, as the
official ``clip_grad_norm_(shared_parameters, max_norm)``. ``weight/<task>`` logs α.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.gradients import StepContext
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting, normalised_gram
from mtlbench.registry import register_method

_RIDGE = 1e-8
_RIDGE_TOL = 1e-6


class NashSolverError(RuntimeError):
    """The Nash bargaining solver did not reach its tolerance; ``last`` is its last iterate."""

    def __init__(self, message: str, last: Tensor, residual: float) -> None:
        super().__init__(message)
        self.last = last
        self.residual = residual


def nash_residual(gram: Tensor, alpha: Tensor) -> float:
    """``max_t |α_t (Mα)_t − 1|`` over the tasks with a non-zero gradient (dimensionless)."""
    m = gram.detach().to("cpu", torch.float64)
    a = alpha.detach().to("cpu", torch.float64)
    live = m.diagonal() > 0
    return float((a * (m @ a) - 1)[live].abs().max()) if bool(live.any()) else 0.0


def _objective(a: Tensor, x: Tensor) -> float:
    return float(0.5 * x @ (a @ x) - torch.log(x).sum())


def _residual(a: Tensor, x: Tensor, tol: float) -> tuple[float, float]:
    """max|x(Ax) − 1| and the tolerance it is held to: ``tol``, or the float64 rounding floor of
    x(Ax) when that is larger (64·eps·max x(|A|x): near-opposed gradients make (Ax)_t a difference
    of terms 1e6 times larger than itself, so 1e-12 is out of reach while 1e-10 is exact)."""
    floor = 64 * torch.finfo(torch.float64).eps * float((x * (a.abs() @ x)).max())
    return float((x * (a @ x) - 1).abs().max()), max(tol, floor)


def _newton(a: Tensor, x: Tensor, niter: int, tol: float) -> tuple[Tensor, float, bool]:
    """Damped Newton on the self-concordant ``f(x) = ½ xᵀAx − Σ log x``.

    Returns x, max|x(Ax) − 1| and whether it met its tolerance (:func:`_residual`). With the Newton
    decrement λ: while λ >= 1/4 the full step is taken only if it stays in x > 0 and decreases f,
    otherwise the damped step Δ/(1+λ) (always inside, decreasing f by at least λ − log(1+λ));
    below 1/4 full steps converge quadratically (Nesterov & Nemirovskii).
    """
    residual, limit = _residual(a, x, tol)
    for _ in range(niter):
        if residual <= limit:
            break
        grad = a @ x - 1 / x
        step = -torch.linalg.solve(a + torch.diag(1 / x**2), grad)
        decrement = math.sqrt(max(float(-(grad @ step)), 0.0))
        full = x + step
        if decrement >= 0.25 and not (bool((full > 0).all()) and _objective(a, full) < _objective(a, x)):
            full = x + step / (1 + decrement)
        x = full
        residual, limit = _residual(a, x, tol)
    return x, residual, residual <= limit


def nash_solution(
    gram: Tensor, optim_niter: int = 20, init: Tensor | None = None, tol: float = 1e-12
) -> tuple[Tensor, float, bool]:
    """(α, residual of the solved equation, whether the ridge fallback was needed); float64, CPU.

    Raises ``ValueError`` for a zero or non-finite ``M`` and :class:`NashSolverError` when neither
    the plain nor the ridge solve reaches its tolerance.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"Parameter `gram` should be a square matrix. Found shape {tuple(gram.shape)}.")
    m = gram.detach().to("cpu", torch.float64)
    scale = float(torch.linalg.matrix_norm(m))
    if not math.isfinite(scale) or scale == 0.0:
        raise ValueError(f"The Nash-MTL weights are undefined for a Gram matrix of norm {scale}.")
    c_all, n_all, live = normalised_gram(m)
    c, n = c_all[live][:, live], n_all[live]
    t = c.shape[0]
    candidates = [torch.ones(t, dtype=torch.float64), torch.linalg.pinv(c, hermitian=True).sum(1)]
    if init is not None and bool(torch.isfinite(init).all()) and bool((init > 0).all()):
        candidates.append(init.detach().to("cpu", torch.float64)[live] * n)
    candidates = [v for v in candidates if bool((v > 0).all())]
    x: Tensor | None = None
    residual, stage_tol, ridged, converged = math.inf, tol, False, False
    for ridge, stage_tol in ((0.0, tol), (_RIDGE, _RIDGE_TOL)):
        a = c + ridge * torch.eye(t, dtype=torch.float64)
        # Each candidate start on its ray at the optimal length √(T / vᵀAv); keep the lowest f.
        starts = [v * math.sqrt(t / float(v @ (a @ v))) for v in candidates if float(v @ (a @ v)) > 0]
        if not starts:  # every candidate is a null direction: f is unbounded below along it
            continue
        x = min(starts, key=lambda z: _objective(a, z))
        x, residual, converged = _newton(a, x, optim_niter, stage_tol)
        ridged = ridge > 0
        if converged:
            break
    alpha = torch.zeros(m.shape[0], dtype=torch.float64)
    if x is None:  # no candidate start had a positive curvature, even with the ridge
        raise NashSolverError("Nash-MTL solver found no usable starting point", alpha + math.nan, math.inf)
    alpha[live] = x / n
    if not converged:
        raise NashSolverError(
            f"Nash-MTL solver did not converge in {optim_niter} iterations "
            f"(residual max|α_t(Mα)_t − 1| = {residual:.3e} > {stage_tol:.1e})",
            alpha,
            residual,
        )
    return alpha, residual, ridged


def nash_weights(
    gram: Tensor, optim_niter: int = 20, init: Tensor | None = None, tol: float = 1e-12
) -> Tensor:
    """The α > 0 with ``(M α)_t = 1/α_t`` for the T×T Gram matrix ``M`` (same dtype and device)."""
    return nash_solution(gram, optim_niter, init, tol)[0].to(gram.device, gram.dtype)


@dataclass(frozen=True)
class NashMTLParams:
    """Nash-MTL hyper-parameters (defaults of the official code) and the heads' convention."""

    update_weights_every: int = 1
    optim_niter: int = 20
    max_norm: float = 1.0
    heads: HeadWeighting = "weighted"


@register_method("nash_mtl")
class NashMTL(GramianWeighting):
    """Nash-MTL: shared update Σ α_t g_t with the Nash bargaining weights (M α = 1/α), norm-clipped."""

    Params = NashMTLParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        t = len(self.task_names)
        self.register_buffer("alpha", torch.ones(t, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("solver_failures", torch.zeros((), dtype=torch.long))
        self.register_buffer("fallbacks", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        p = self.params
        check_param("update_weights_every", p.update_weights_every, "int", low=1)
        check_param("optim_niter", p.optim_niter, "int", low=1)
        check_param("max_norm", p.max_norm, low=0, low_open=True, allow_inf=True)
        check_param("heads", p.heads, "choice", choices=HEAD_WEIGHTINGS)
        check_tasks("Nash-MTL", self.task_names, 2)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"max_norm": trial.suggest_float("max_norm", 0.1, 10.0, log=True)}

    def _solve(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        """New α for ``gram`` (warm-started from the last one); fallbacks and failures warn and count."""
        try:
            alpha, _, ridged = nash_solution(gram, self.params.optim_niter, init=self.alpha)
            if ridged:
                self.fallbacks += 1
                warnings.warn(
                    "Nash-MTL: no finite bargaining solution (Pareto-stationary gradients); "
                    f"used the ridge C + {_RIDGE:g}·I (fallback {int(self.fallbacks)})",
                    RuntimeWarning,
                    stacklevel=4,
                )
        except NashSolverError as exc:
            self.solver_failures += 1
            usable = bool(torch.isfinite(exc.last).all() and (exc.last >= 0).all() and (exc.last > 0).any())
            warnings.warn(
                f"{exc}; using the {'last iterate' if usable else 'previous weights'} "
                f"(failure {int(self.solver_failures)})",
                RuntimeWarning,
                stacklevel=4,
            )
            alpha = exc.last if usable else self.alpha.double().cpu()
        return alpha, {"nash/residual": nash_residual(gram, alpha)}

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        update_now = int(self.calls) % self.params.update_weights_every == 0
        self.calls += 1
        degenerate = not bool(torch.isfinite(gram).all()) or float(gram.abs().max()) == 0.0
        logs: dict[str, float] = {}
        if update_now and not degenerate:
            alpha, logs = self._solve(gram)
            self.alpha.copy_(alpha.to(self.alpha))
        logs["nash/solver_failures"] = float(self.solver_failures)
        logs["nash/fallbacks"] = float(self.fallbacks)
        logs["nash/degenerate"] = float(degenerate)
        return self.alpha.detach().to("cpu", torch.float64), logs

    def postprocess(self, vector: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``d ← d·min(1, max_norm/‖d‖)`` (shared update only)."""
        norm = float(vector.double().norm())
        if norm > self.params.max_norm:
            vector = vector * (self.params.max_norm / norm)
        return vector, {"nash/update_norm": norm}
