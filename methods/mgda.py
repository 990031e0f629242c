"""MGDA and MGDA-UB (Sener & Koltun, NeurIPS 2018), with the shared min-norm solver.

Both find the minimum-norm point of the convex hull of the task gradients::

    w = argmin_{w ∈ Δ_T} ‖Σ_t w_t g̃_t‖²,      g̃_t = g_t / n_t  (gradient normalisation)

by Frank–Wolfe on the T×T Gram matrix (:func:`min_norm_weights`: start at the exact min-norm point
of the best pair of tasks, as the official ``find_min_norm_element_FW``; at most 250 iterations,
stop when the ℓ1 change of w is below 1e-5; every step is an exact line search, the closed-form
two-point solution; with two tasks that closed form is the exact answer and no iteration is run).
Plain Frank–Wolfe converges sublinearly when a task's optimal weight is 0 (250 iterations left
errors of 4e-2 on random 4-task matrices), so it also takes *away steps* (Wolfe 1970;
Lacoste-Julien & Jaggi 2015), which move weight off the worst task in the support and converge
linearly; the fixed point and the stopping rule are those of the official solver.

Normalisations n_t (the paper's code): ``none`` 1, ``l2`` ‖g_t‖, ``loss`` L_t, ``loss+`` L_t·‖g_t‖.

Conventions pinned here:

* The task objective is f_t = λ_t L_t (the configured weight included), as for every gradient
  combination method; ``loss`` normalisation therefore divides by λ_t L_t.
* As in the official code, the normalised gradients only choose w; the update applies w to the
  **un-normalised** objectives: MGDA's shared gradient is Σ_t w_t g_t, MGDA-UB backpropagates
  Σ_t w_t λ_t L_t once. LibMTL instead applies w to the normalised gradients (the result is
  rescaled by 1/n_t); with ``none`` the two agree.
* w lies on the simplex (Σ w_t = 1): the result is a convex combination, the scale of one task
  gradient, not of the sum over tasks — the scale of the paper, the official code, LibMTL and
  torchjd alike.
* MGDA-UB takes the gradients w.r.t. the shared representation ``bottleneck``, summed over the
  batch dimension (LibMTL's convention; the official code flattens the batch in), and its backward
  also gives the heads the gradient of Σ w_t λ_t L_t.
* The Gram matrix is formed from G divided by its largest entry, so the weights do not depend on
  the gradients' scale (1e-10 … 1e15) and an all-zero G gives w = 𝟙/T and a zero update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlbench.registry import register_method

from .base import MethodNeeds, MultiTaskMethod, StepInputs, detach_float
from .gradient_combination import GradientCombination, pairwise_cosines

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS = ("none", "l2", "loss", "loss+")
MAX_ITERATIONS = 250
STOP_CRITERION = 1e-5


@dataclass(frozen=True)
class MGDAParams:
    """MGDA hyper-parameters: gradient normalisation and the Frank–Wolfe budget."""

    normalization: Normalization = "none"
    max_iterations: int = MAX_ITERATIONS
    tolerance: float = STOP_CRITERION


@dataclass(frozen=True)
class MGDAUBParams:
    """MGDA-UB hyper-parameters: the probed representation, normalisation and Frank–Wolfe budget."""

    normalization: Normalization = "none"
    max_iterations: int = MAX_ITERATIONS
    tolerance: float = STOP_CRITERION
    representation: str = "bottleneck"


def scaled_gram(grads: Tensor) -> Tensor:
    """GGᵀ of ``grads`` divided by its largest entry squared, in float64 (zeros for G = 0)."""
    peak = grads.detach().abs().max() if grads.numel() else grads.new_zeros(())
    g = grads.detach() / peak if peak > 0 else grads.detach()
    g = g.double()
    return g @ g.T


def _line_search(aa: float, ab: float, bb: float) -> float:
    """γ ∈ [0, 1] minimising ‖(1 − γ)a + γb‖² from the inner products (0 when a = b)."""
    denom = aa + bb - 2.0 * ab
    if denom <= 0.0:
        return 0.0
    return min(max((aa - ab) / denom, 0.0), 1.0)


def _best_pair_start(m: Tensor) -> Tensor:
    """The exact min-norm point over the best pair of tasks (the official code's starting point)."""
    n = m.shape[0]
    best, start = float("inf"), torch.full((n,), 1.0 / n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            gamma = _line_search(float(m[j, j]), float(m[i, j]), float(m[i, i]))
            cost = (
                (1 - gamma) ** 2 * float(m[j, j])
                + 2 * gamma * (1 - gamma) * float(m[i, j])
                + gamma**2 * float(m[i, i])
            )
            if cost < best:
                best = cost
                start = torch.zeros(n, dtype=torch.float64)
                start[i], start[j] = gamma, 1.0 - gamma
    return start


def min_norm_weights(
    gram: Tensor, max_iterations: int = MAX_ITERATIONS, tolerance: float = STOP_CRITERION
) -> Tensor:
    """The weights w ∈ Δ_T of the min-norm point of conv{g_t} from the Gram matrix GGᵀ.

    Two tasks: exact closed form. More: Frank–Wolfe with away steps from the best pair's exact
    solution, exact line search, at most ``max_iterations`` steps, stopping once ‖Δw‖₁ < ``tolerance``
    (a step that drops a task from the support does not stop it). Returned in ``gram``'s dtype.
    """
    m = gram.detach().to("cpu", torch.float64)
    n = m.shape[0]
    if n == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    if n == 2:
        # w_1 = γ minimises ‖γ g_1 + (1 − γ) g_2‖², i.e. the line search from g_2 towards g_1.
        gamma = _line_search(float(m[1, 1]), float(m[0, 1]), float(m[0, 0])) if m.abs().max() > 0 else 0.5
        w = torch.tensor([gamma, 1.0 - gamma], dtype=torch.float64)
        return w.to(gram.device, gram.dtype)
    if not m.abs().max() > 0:
        return torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    w = _best_pair_start(m)
    for _ in range(max_iterations):
        mw = m @ w
        value = float(w @ mw)
        toward = int(torch.argmin(mw))
        support = torch.nonzero(w > 0).flatten()
        away = int(support[torch.argmax(mw[support])])
        direction = -w.clone()
        if value - float(mw[toward]) >= float(mw[away]) - value:  # Frank–Wolfe step towards a vertex
            direction[toward] += 1.0
            limit = 1.0
        else:  # away step: move weight off the worst vertex in the support
            direction = -direction
            direction[away] -= 1.0
            limit = float(w[away] / (1.0 - w[away])) if w[away] < 1 else 0.0
        curvature = float(direction @ m @ direction)
        slope = float(mw @ direction)
        if curvature > 0:
            gamma = min(max(-slope / curvature, 0.0), limit)
        else:  # flat along the direction: go all the way only if it descends
            gamma = limit if slope < 0 else 0.0
        change = gamma * direction
        w = (w + change).clamp_min(0.0)
        w = w / w.sum()
        if float(change.abs().sum()) < tolerance and gamma < limit:
            break
    return w.to(gram.device, gram.dtype)


def gradient_normalizers(grads: Tensor, losses: Tensor | None, normalization: str) -> Tensor:
    """The per-task n_t of ``normalization`` (1 where n_t would be zero, so zero rows stay zero)."""
    norms = grads.detach().double().norm(dim=1)
    if normalization == "none":
        n = torch.ones_like(norms)
    elif normalization == "l2":
        n = norms
    elif normalization in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalization {normalization!r} needs the task losses")
        n = losses.detach().double().to(norms.device)
        if normalization == "loss+":
            n = n * norms
    else:
        raise ValueError(f"unknown normalization {normalization!r} (one of {', '.join(NORMALIZATIONS)})")
    return torch.where(n > 0, n, torch.ones_like(n))


def mgda_weights(
    grads: Tensor,
    losses: Tensor | None = None,
    normalization: str = "none",
    max_iterations: int = MAX_ITERATIONS,
    tolerance: float = STOP_CRITERION,
) -> Tensor:
    """Weights w (applied to the un-normalised gradients) for the T×P ``grads``."""
    n = gradient_normalizers(grads, losses, normalization)
    normalised = grads.detach().double() / n.to(grads.device).unsqueeze(1)
    w = min_norm_weights(scaled_gram(normalised), max_iterations, tolerance)
    return w.to(grads.device, grads.dtype)


def mgda_combine(grads: Tensor, normalization: str = "none", losses: Tensor | None = None) -> Tensor:
    """Σ_t w_t g_t with the MGDA weights of the T×P ``grads``."""
    return mgda_weights(grads, losses, normalization) @ grads


def _validate(method: MultiTaskMethod) -> None:
    p = method.params
    if p.normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Parameter `normalization` should be one of {', '.join(NORMALIZATIONS)}. "
            f"Found `normalization = {p.normalization!r}`."
        )
    if isinstance(p.max_iterations, bool) or not isinstance(p.max_iterations, int) or p.max_iterations < 1:
        raise ValueError(
            "Parameter `max_iterations` should be an integer >= 1. "
            f"Found `max_iterations = {p.max_iterations!r}`."
        )
    if not p.tolerance > 0:
        raise ValueError(f"Parameter `tolerance` should be > 0. Found `tolerance = {p.tolerance!r}`.")
    if len(method.task_names) < 1:
        raise ValueError(f"MGDA needs at least one task, got {method.task_names}")


def _search_space(trial: Any) -> dict[str, Any]:
    return {"normalization": trial.suggest_categorical("normalization", list(NORMALIZATIONS))}


def _weight_logs(names: Sequence[str], weights: Tensor) -> dict[str, float]:
    return {f"weight/{t}": float(w) for t, w in zip(names, weights.tolist())}


@register_method("mgda")
class MGDA(GradientCombination):
    """MGDA (Sener 2018): min-norm convex combination of the shared-parameter task gradients."""

    Params = MGDAParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        self._losses: Tensor | None = None

    def validate(self) -> None:
        _validate(self)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The gradient normalisation."""
        return _search_space(trial)

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        self._losses = torch.stack(
            [(inputs.weights[t] * inputs.losses[t]).detach().float() for t in self.task_names]
        )
        try:
            return super().backward(inputs)
        finally:
            self._losses = None

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        w = mgda_weights(grads, self._losses, p.normalization, p.max_iterations, p.tolerance)
        return w @ grads, _weight_logs(self.task_names, w)


@register_method("mgda_ub")
class MGDAUB(MultiTaskMethod):
    """MGDA-UB (Sener 2018): MGDA weights from shared-representation gradients, one weighted backward."""

    Params = MGDAUBParams
    needs = MethodNeeds(representation_grads=True)

    def validate(self) -> None:
        _validate(self)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The gradient normalisation."""
        return _search_space(trial)

    def representation_gradient_matrix(self, inputs: StepInputs) -> Tensor:
        """T×(C·H'·W') matrix of ∇_z(λ_t L_t), summed over the batch (true scale under fp16)."""
        rep = inputs.representation(self.params.representation)
        targets = [rep] if isinstance(rep, Tensor) else list(rep)
        rows = []
        for t in self.task_names:
            loss = inputs.scale(inputs.weights[t] * inputs.losses[t])
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, targets, retain_graph=True, allow_unused=True)
            else:
                grads = (None,) * len(targets)
            parts = [
                (torch.zeros_like(z) if g is None else g).float().sum(0).reshape(-1)
                for z, g in zip(targets, grads)
            ]
            rows.append(torch.cat(parts))
        return torch.stack(rows) / inputs.loss_scale

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        p = self.params
        grads = self.representation_gradient_matrix(inputs)
        objectives = [inputs.weights[t] * inputs.losses[t] for t in self.task_names]
        losses = torch.stack([f.detach().float() for f in objectives])
        w = mgda_weights(grads, losses, p.normalization, p.max_iterations, p.tolerance)
        total = sum(float(wt) * f for wt, f in zip(w.tolist(), objectives))
        inputs.scale(total).backward()  # type: ignore[union-attr]
        logs = {"loss": detach_float(inputs.weighted_sum())}
        logs.update(pairwise_cosines(grads, self.task_names))
        logs.update(_weight_logs(self.task_names, w))
        return logs
