"""Optimisation paths of a registered multitask method on the toy problem.

The point x ∈ R² is the only shared parameter; there are no heads and no shared representation.
Each step hands the method the two losses exactly as the image trainer does (:class:`StepInputs`
with weights 1), lets it fill ``x.grad``, and takes an Adam step (the papers' optimiser; the
method's own trainable parameters, if any, join the same optimiser as in the trainer). Methods
with ``needs.extra_forward`` get ``after_step`` with the losses recomputed without gradient.
``on_epoch_end`` is never called: the problem has no epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlbench.api.method import MultiTaskMethod, StepInputs
from mtlbench.registry import METHODS

from .problem import TASK_NAMES, losses


def skip_reason(method_name: str) -> str | None:
    """Why ``method_name`` cannot run on the toy problem, or ``None`` if it can."""
    cls = METHODS.get(method_name).obj
    if cls.needs.representation_grads:
        return f"method {method_name!r} needs a shared representation; the toy problem has none"
    return None


def build_method(method_name: str, method_params: Any = None) -> MultiTaskMethod:
    """The registered method with its default ``Params()`` (or ``method_params``), for tasks f1, f2."""
    reason = skip_reason(method_name)
    if reason is not None:
        raise ValueError(reason)
    cls = METHODS.get(method_name).obj
    params = method_params if method_params is not None else cls.Params()
    return cls(TASK_NAMES, params)


def run_trajectory(
    method_name: str,
    start: tuple[float, float],
    steps: int,
    lr: float,
    method_params: Any = None,
    *,
    f1_scale: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """The path of x from ``start`` over ``steps`` Adam steps: a float64 array (steps+1, 2).

    Row 0 is ``start``, row k the point after k steps. The run is deterministic: methods that draw
    random numbers (PCGrad's task order) use torch's global generator seeded with ``seed`` inside a
    forked RNG state, so the caller's random state is left untouched.

    Raises ``ValueError`` for a method that needs a shared representation (see :func:`skip_reason`)
    and ``FloatingPointError`` when x or a loss stops being finite.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if len(start) != 2:
        raise ValueError(f"start must be an (x1, x2) point, got {start!r}")
    path = np.empty((steps + 1, 2), dtype=np.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        method = build_method(method_name, method_params)
        x = nn.Parameter(torch.tensor([float(start[0]), float(start[1])]))
        trainable = [x] + [p for p in method.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=lr)
        weights = {name: 1.0 for name in TASK_NAMES}

        def recompute() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return dict(zip(TASK_NAMES, losses(x, f1_scale)))

        path[0] = x.detach().numpy()
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            values = dict(zip(TASK_NAMES, losses(x, f1_scale)))
            if not all(math.isfinite(v.item()) for v in values.values()):
                raise FloatingPointError(
                    f"{method_name}: non-finite loss at step {step} from start {tuple(start)}: "
                    f"{ {k: float(v) for k, v in values.items()} }"
                )
            inputs = StepInputs(
                losses=values,
                weights=weights,
                shared_parameters=[x],
                representations={},
                step=step,
                head_parameters=[],
            )
            method.backward(inputs)
            optimizer.step()
            if method.needs.extra_forward:
                method.after_step(recompute)
            path[step + 1] = x.detach().numpy()
        if not np.isfinite(path).all():
            bad = int(np.argmax(~np.isfinite(path).all(axis=1)))
            raise FloatingPointError(
                f"{method_name}: x is not finite after step {bad} from start {tuple(start)}"
            )
    return path


def run_trajectories(
    method_name: str,
    starts: Sequence[tuple[float, float]],
    steps: int,
    lr: float,
    method_params: Any = None,
    *,
    f1_scale: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """:func:`run_trajectory` from each start point (each run is seeded the same way)."""
    return [
        run_trajectory(method_name, s, steps, lr, method_params, f1_scale=f1_scale, seed=seed) for s in starts
    ]
