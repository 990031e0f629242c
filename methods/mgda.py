"""MGDA and MGDA-UB (Sener & Koltun, NeurIPS 2018), with an exact min-norm solver.

Both take the minimum-norm point of the convex hull of the (normalised) task gradients::

    w = argmin_{w ∈ Δ_T} ‖Σ_t w_t g̃_t‖²,      g̃_t = g_t / n_t

Solver (:func:`mtlbench.api.simplex.min_norm_point`): the KKT system on each support, smallest
supports first, solved on the cosine matrix, accepted when every task's KKT condition
⟨g_t, d⟩ >= ‖d‖² holds to 1e-9 relative to ‖g_t‖·‖d‖. The official code (and LibMTL, torchjd) runs
Frank–Wolfe and stops on ‖Δw‖₁ < 1e-5, which is not scale-free: with norms 1e3 apart it stops where
the update still conflicts with a task. Wolfe's active-set algorithm (at most ``max_iterations``
major steps) proposes the support; up to 12 tasks every other support is tried if it fails the
check; a support that fails is counted (``mgda/fallbacks``) and logged, never silent.
``tolerance`` (the official Frank–Wolfe stop) is kept for configuration compatibility and
validated, but no longer steers the solver: the check above is the stopping rule.

Normalisations n_t (the official code's ``gradient_normalizers``): ``none`` 1, ``l2`` ‖g_t‖,
``loss`` L_t, ``loss+`` L_t·‖g_t‖. Default ``none``, the paper's method: the official code has no
default (``normalization_type`` is a required setting; its ``sample.json`` uses ``loss+`` and the
code comments that normalising "is optional and not included in the paper").

Conventions pinned here (official code: isl-org/MultiObjectiveOptimization,
``multi_task/train_multi_task.py`` and ``multi_task/min_norm_solvers.py``):

* The task objective is f_t = λ_t L_t; ``loss`` normalisation divides by λ_t L_t.
* w chooses the combination; it is applied to the **un-normalised** gradients (official code;
  LibMTL applies it to the normalised ones — with ``none`` the two agree). Σ w_t = 1.
* Heads (``heads``): ``weighted`` (default, official code) back-propagates Σ w_t λ_t L_t through
  the heads; ``unweighted`` gives them Σ λ_t L_t (LibMTL). MGDA-UB always back-propagates
  Σ w_t λ_t L_t through the whole model, as the official code does.
* MGDA-UB (``batch``): ``flatten`` (default, official code and the bound's derivation) takes the
  representation gradient with the batch as part of the vector; ``sum`` sums it over the batch
  (LibMTL). Under fp16 the representation gradients are taken of the scaled loss and unscaled in
  fp32; a task whose scaled gradient overflows is taken again at a smaller scale, so no step is
  lost to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.gradients import StepContext, gram_cosines, gram_matrix
from mtlbench.api.method import MethodNeeds, MultiTaskMethod, StepInputs, detach_float
from mtlbench.api.simplex import SimplexSolution, min_norm_point
from mtlbench.api.weighting import HEAD_WEIGHTINGS, GramianWeighting, HeadWeighting, weight_logs
from mtlbench.registry import register_method

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS = ("none", "l2", "loss", "loss+")
MAX_ITERATIONS = 250
STOP_CRITERION = 1e-5


@dataclass(frozen=True)
class MGDAParams:
    """MGDA: gradient normalisation, the >12-task Frank–Wolfe budget, and the heads' convention."""

    normalization: Normalization = "none"
    max_iterations: int = MAX_ITERATIONS
    tolerance: float = STOP_CRITERION
    heads: HeadWeighting = "weighted"


@dataclass(frozen=True)
class MGDAUBParams:
    """MGDA-UB: the probed representation, normalisation, Frank–Wolfe budget, batch handling."""

    normalization: Normalization = "none"
    max_iterations: int = MAX_ITERATIONS
    tolerance: float = STOP_CRITERION
    representation: str = "bottleneck"
    batch: Literal["flatten", "sum"] = "flatten"


def min_norm_solution(
    gram: Tensor, max_iterations: int = MAX_ITERATIONS, tolerance: float = STOP_CRITERION
) -> SimplexSolution:
    """The certified min-norm weights of the Gram matrix (see :func:`min_norm_point`)."""
    m = gram.detach().to("cpu", torch.float64)
    t = m.shape[0]
    if t == 1 or not float(m.abs().max()) > 0:
        return SimplexSolution(torch.full((t,), 1.0 / t, dtype=torch.float64), 0.0, False)
    return min_norm_point(m, max_iterations=max_iterations)


def min_norm_weights(
    gram: Tensor, max_iterations: int = MAX_ITERATIONS, tolerance: float = STOP_CRITERION
) -> Tensor:
    """The weights w ∈ Δ_T of the min-norm point of conv{g_t} (in ``gram``'s dtype and device)."""
    return min_norm_solution(gram, max_iterations, tolerance).weights.to(gram.device, gram.dtype)


def _normalizers(norms: Tensor, losses: Tensor | None, normalization: str) -> Tensor:
    if normalization == "none":
        n = torch.ones_like(norms)
    elif normalization == "l2":
        n = norms
    elif normalization in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalization {normalization!r} needs the task losses")
        n = losses.detach().double().to(norms.device) * (norms if normalization == "loss+" else 1.0)
    else:
        raise ValueError(f"unknown normalization {normalization!r} (one of {', '.join(NORMALIZATIONS)})")
    return torch.where(n > 0, n, torch.ones_like(n))


def gradient_normalizers(grads: Tensor, losses: Tensor | None, normalization: str) -> Tensor:
    """The per-task n_t of ``normalization`` (1 where n_t would be zero, so zero rows stay zero)."""
    return _normalizers(grads.detach().double().norm(dim=1), losses, normalization)


def mgda_gram_solution(
    gram: Tensor, losses: Tensor | None, normalization: str, max_iterations: int, tolerance: float
) -> SimplexSolution:
    """The min-norm solution on the normalised Gram matrix M_ij / (n_i n_j)."""
    m = gram.detach().to("cpu", torch.float64)
    n = _normalizers(m.diagonal().clamp_min(0).sqrt(), losses, normalization)
    return min_norm_solution(m / n[:, None] / n[None, :], max_iterations, tolerance)


def mgda_weights(
    grads: Tensor,
    losses: Tensor | None = None,
    normalization: str = "none",
    max_iterations: int = MAX_ITERATIONS,
    tolerance: float = STOP_CRITERION,
) -> Tensor:
    """Weights w (applied to the un-normalised gradients) for the T×P ``grads``."""
    w = mgda_gram_solution(gram_matrix(grads), losses, normalization, max_iterations, tolerance).weights
    return w.to(grads.device, grads.dtype)


def mgda_combine(grads: Tensor, normalization: str = "none", losses: Tensor | None = None) -> Tensor:
    """Σ_t w_t g_t with the MGDA weights of the T×P ``grads``."""
    return mgda_weights(grads, losses, normalization) @ grads


class _MinNormMixin:
    params: Any
    task_names: tuple[str, ...]
    fallbacks: Tensor

    def validate(self) -> None:
        p = self.params
        check_param("normalization", p.normalization, "choice", choices=NORMALIZATIONS)
        check_param("max_iterations", p.max_iterations, "int", low=1)
        check_param("tolerance", p.tolerance, low=0, low_open=True)
        check_param("heads", getattr(p, "heads", "weighted"), "choice", choices=HEAD_WEIGHTINGS)
        check_param("batch", getattr(p, "batch", "sum"), "choice", choices=("flatten", "sum"))
        check_tasks("MGDA", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The gradient normalisation."""
        return {"normalization": trial.suggest_categorical("normalization", list(NORMALIZATIONS))}

    def solve(self, gram: Tensor, losses: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        sol = mgda_gram_solution(gram, losses, p.normalization, p.max_iterations, p.tolerance)
        self.fallbacks += int(sol.fallback)
        return sol.weights, {"mgda/kkt_residual": sol.residual, "mgda/fallbacks": float(self.fallbacks)}


@register_method("mgda")
class MGDA(_MinNormMixin, GramianWeighting):
    """MGDA (Sener 2018): min-norm convex combination of the shared-parameter task gradients."""

    Params = MGDAParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        self.register_buffer("fallbacks", torch.zeros((), dtype=torch.long))

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return self.solve(gram, ctx.losses)


@register_method("mgda_ub")
class MGDAUB(_MinNormMixin, MultiTaskMethod):
    """MGDA-UB (Sener 2018): MGDA weights from shared-representation gradients, one weighted backward."""

    Params = MGDAUBParams
    needs = MethodNeeds(representation_grads=True)

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        self.register_buffer("fallbacks", torch.zeros((), dtype=torch.long))

    def representation_gradient_matrix(self, inputs: StepInputs) -> Tensor:
        """T×N matrix of ∇_z(λ_t L_t) in fp32 at true scale (batch flattened in, or summed over)."""
        rep = inputs.representation(self.params.representation)
        targets = [rep] if isinstance(rep, Tensor) else list(rep)
        rows = []
        for t in self.task_names:
            objective = inputs.weights[t] * inputs.losses[t]
            grads, scale = (None,) * len(targets), inputs.loss_scale
            while objective.requires_grad:
                scaled = objective * scale if scale != 1.0 else objective
                grads = torch.autograd.grad(scaled, targets, retain_graph=True, allow_unused=True)
                if scale <= 1.0 or all(g is None or bool(torch.isfinite(g).all()) for g in grads):
                    break
                scale = max(scale / 2.0**8, 1.0)  # an overflowing fp16 gradient: take it less scaled
            parts = []
            for z, g in zip(targets, grads):
                g = torch.zeros_like(z, dtype=torch.float32) if g is None else g.float() / scale
                parts.append((g.sum(0) if self.params.batch == "sum" else g).reshape(-1))
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        grads = self.representation_gradient_matrix(inputs)
        objectives = [inputs.weights[t] * inputs.losses[t] for t in self.task_names]
        losses = torch.tensor([detach_float(f) for f in objectives], dtype=torch.float64)
        gram = gram_matrix(grads)
        w, logs = self.solve(gram, losses)
        total = sum(float(wt) * f for wt, f in zip(w.tolist(), objectives))
        inputs.scale(total).backward()  # type: ignore[union-attr]
        logs = {"loss": detach_float(inputs.weighted_sum()), **logs, **weight_logs(self.task_names, w)}
        return {**gram_cosines(gram, self.task_names), **logs} if inputs.diagnostics else logs
