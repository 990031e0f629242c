"""The two-objective toy problem of CAGrad (Liu et al., NeurIPS 2021, Fig. 1).

Source: B. Liu, X. Liu, X. Jin, P. Stone, Q. Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021, Fig. 1 and the authors' script ``toy.py`` (github.com/Cranial-XIX/CAGrad);
reused by Nash-MTL (Navon et al., ICML 2022, ``experiments/toy``) and FAMO (Liu et al., NeurIPS 2023).
The formula below is written out from those definitions; this module implements it anew.

For x = (x₁, x₂) ∈ R², with ε = 5·10⁻⁶ (a floor that keeps the logarithm finite)::

    c₁(x₂) = max(tanh(x₂/2), 0)        c₂(x₂) = max(tanh(−x₂/2), 0)
    l₁(x)  = log max(|−(x₁+7)/2 + tanh(x₂)|, ε) + 6
    l₂(x)  = log max(|(3−x₁)/2 − tanh(x₂) + 2|, ε) + 6
    q₁(x)  = ((x₁−7)² + 0.1·(x₂+8)²)/10 − 20
    q₂(x)  = ((x₁+7)² + 0.1·(x₂+8)²)/10 − 20
    f₁(x)  = c₁·l₁ + c₂·q₁             f₂(x) = c₁·l₂ + c₂·q₂

(the script writes ``tanh(−x₂)``; tanh is odd, so −tanh(−x₂) = tanh(x₂)). At x₂ = 0 the derivative of
each max(·, 0) is taken from its tanh branch (±1/2), the one-sided value that the papers' PyTorch
clamp returned there; with a zero derivative the start (0, 0) is a stationary point of everything.

Above the x₁ axis only the logarithmic terms act: each has a narrow valley (where its argument
vanishes, x₁ = 2·tanh(x₂) − 7 for f₁ and x₁ = 7 − 2·tanh(x₂) for f₂, near x₁ = ∓5) whose floor is
flat (the clamp) and traps gradient descent. Below it only the quadratic bowls act, scaled by c₂,
which tends to 1 for x₂ → −∞.

Derived facts (x₂ < 0, so c₁ = 0 and f_i = c₂(x₂)·(a_i(x₁) + r(x₂)) with a₁ = (x₁−7)²/10,
a₂ = (x₁+7)²/10, r = (x₂+8)²/100 − 20):

* ∂f_i/∂x₁ vanishes at x₁ = 7 (f₁) and x₁ = −7 (f₂); the minima are **(7, −8.43446)** for f₁ and
  **(−7, −8.43446)** for f₂, both with value −19.98943. x₂ solves c₂′(x₂)·r(x₂) + c₂(x₂)·r′(x₂) = 0.
* A stationary point of w·f₁ + (1−w)·f₂ has x₁ = 7(2w−1), and then w·a₁ + (1−w)·a₂ = (49 − x₁²)/10 =: h,
  so x₂ solves c₂′(x₂)·(h + r(x₂)) + c₂(x₂)·r′(x₂) = 0. The **Pareto set** is this curve for
  x₁ ∈ [−7, 7]: from (−7, −8.43446) through (0, −8.35511) to (7, −8.43446). The paper draws it as the
  segment x₂ = −8.3552, which is exact only at x₁ = 0, the minimiser of the average (f₁+f₂)/2.
* Scaling one objective (Nash-MTL's imbalanced variant multiplies f₁ by 0.1) leaves the Pareto set
  unchanged but moves the minimiser of the sum.

Optimisation protocol of the papers: Adam, lr = 10⁻³, 100 000 steps (CAGrad; Nash-MTL uses 35 000),
from the start points in :data:`CAGRAD_STARTS` or :data:`NASH_MTL_STARTS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Floor of the logarithm's argument (the script's ``LOWER``).
LOG_FLOOR = 5e-6
TASK_NAMES = ("f1", "f2")
#: Start points of CAGrad's Fig. 1.
CAGRAD_STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
#: Start points of Nash-MTL's toy experiment (a superset of two of CAGrad's).
NASH_MTL_STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (0.0, 0.0),
    (9.0, 9.0),
    (-7.5, -0.5),
    (9.0, -1.0),
)
#: x₂ of the minima of f₁ and f₂ (derived, see the module docstring).
MINIMUM_X2 = -8.434459855516
#: The minima of f₁ and f₂ and their common value.
F1_MINIMUM = (7.0, MINIMUM_X2)
F2_MINIMUM = (-7.0, MINIMUM_X2)
MINIMUM_VALUE = -19.989425137
#: The minimiser of the unscaled average (f₁+f₂)/2 (the paper's x₂ = −8.3552).
AVERAGE_MINIMUM = (0.0, -8.355109776756)
#: The plotted window of the papers' figures.
X_RANGE = (-10.0, 10.0)


def losses(x: Tensor, f1_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(f1, f2)`` at ``x`` of shape ``(..., 2)``; differentiable, values of shape ``(...)``.

    ``f1_scale`` multiplies f₁ (1.0: CAGrad's problem; 0.1: Nash-MTL's imbalanced variant).
    """
    if x.shape[-1] != 2:
        raise ValueError(f"x must have a last dimension of 2, got shape {tuple(x.shape)}")
    x1, x2 = x[..., 0], x[..., 1]
    t2 = torch.tanh(x2)
    half = torch.tanh(0.5 * x2)
    # max(±tanh(x₂/2), 0) with the derivative of the tanh branch at x₂ = 0 (where keeps it; recent
    # torch's clamp_min gives 0 there, so the start (0, 0) of Nash-MTL's figure would never move).
    c1 = torch.where(x2 >= 0, half, 0.0).unsqueeze(-1)
    c2 = torch.where(x2 <= 0, -half, 0.0).unsqueeze(-1)
    # Both tasks at once along a new last axis (a smaller autograd graph: this runs 10⁵ times per path).
    log_args = torch.stack([-0.5 * (x1 + 7) + t2, 0.5 * (3 - x1) - t2 + 2], dim=-1)
    centred = torch.stack([x1 - 7, x1 + 7], dim=-1)
    logs = log_args.abs().clamp_min(LOG_FLOOR).log() + 6
    bowls = 0.1 * centred**2 + (0.01 * (x2 + 8) ** 2 - 20).unsqueeze(-1)
    f = c1 * logs + c2 * bowls
    if f1_scale != 1.0:
        f = f * f.new_tensor([f1_scale, 1.0])
    f1, f2 = f.unbind(-1)
    return f1, f2


def _pareto_x2_equation(x2: np.ndarray, h: np.ndarray) -> np.ndarray:
    """c₂′(x₂)·(h + r(x₂)) + c₂(x₂)·r′(x₂): zero at the Pareto set's x₂ for a given h (x₂ < 0)."""
    c2 = np.tanh(-0.5 * x2)
    dc2 = -0.5 * (1.0 - c2**2)
    r = 0.01 * (x2 + 8.0) ** 2 - 20.0
    dr = 0.02 * (x2 + 8.0)
    return dc2 * (h + r) + c2 * dr


def pareto_x2(x1: np.ndarray | float) -> np.ndarray:
    """x₂ of the Pareto set above each x₁ ∈ [−7, 7] (bisection to float64 precision)."""
    x1 = np.asarray(x1, dtype=np.float64)
    if np.any(np.abs(x1) > 7.0 + 1e-12):
        raise ValueError("the Pareto set spans x1 in [-7, 7] only")
    h = (49.0 - x1**2) / 10.0
    lo = np.full_like(h, -12.0)  # equation < 0 here for every h in [0, 4.9]
    hi = np.full_like(h, -6.5)  # and > 0 here
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        negative = _pareto_x2_equation(mid, h) < 0
        lo = np.where(negative, mid, lo)
        hi = np.where(negative, hi, mid)
    return 0.5 * (lo + hi)


def pareto_set(n: int = 201) -> np.ndarray:
    """``n`` points (n, 2) of the Pareto set, from f₂'s minimum (−7, ·) to f₁'s minimum (7, ·)."""
    x1 = np.linspace(-7.0, 7.0, n)
    return np.stack([x1, pareto_x2(x1)], axis=1)


@dataclass(frozen=True)
class ToyParams:
    """Settings of one toy-problem figure: Adam steps and learning rate, start points, scale of f₁."""

    steps: int = 100_000
    lr: float = 1e-3
    starts: tuple[tuple[float, float], ...] = NASH_MTL_STARTS
    f1_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not self.starts:
            raise ValueError("--starts must hold at least one (x1, x2) point")
        for point in self.starts:
            if len(point) != 2 or not all(math.isfinite(float(v)) for v in point):
                raise ValueError(f"--starts: expected finite (x1, x2) points, got {point!r}")
        if not (self.f1_scale > 0 and math.isfinite(self.f1_scale)):
            raise ValueError(f"--f1-scale must be a positive number, got {self.f1_scale}")
