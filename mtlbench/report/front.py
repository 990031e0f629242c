"""The linear-scalarisation front (Xin et al. 2022; Kurin et al. 2022) and which methods lie beyond it.

Sweep runs are ``vanilla`` runs whose task weights (``task_args.lambda_<task>``) differ from the
task's defaults (``mtlbench sweep`` trains them). Each weight vector is one point: the mean over its
seeds and folds of two metrics on one split (:data:`FRONT_METRICS`, or ``--front a,b``). The plain
``vanilla`` row (equal weights) is a point of the sweep too. The front is the set of points no other
point Pareto-dominates; a method lies *beyond* the front when it Pareto-dominates at least one
front point (at least as good in both metrics, better in one), and not beyond it otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: The two metrics the front is drawn in, per known task (one per main task).
FRONT_METRICS: dict[str, tuple[str, str]] = {
    "thyroid": ("dice", "f1"),
    "twoshapes": ("pixel_accuracy", "accuracy"),
}


@dataclass
class FrontPoint:
    label: str
    x: float
    y: float
    on_front: bool = False


@dataclass
class Front:
    split: str
    metrics: tuple[str, str]
    higher: tuple[bool, bool]
    points: list[FrontPoint]  # the sweep (incl. equal weights)
    methods: list[FrontPoint]  # every other multitask row
    beyond: list[str]
    not_beyond: list[str]

    def note(self) -> str:
        x, y = self.metrics
        return (
            f"scalarisation front ({len(self.points)} weight vectors, {x} vs {y} on {self.split}): "
            f"beyond the front (Pareto-dominate a front point): {', '.join(self.beyond) or 'none'}; "
            f"not beyond: {', '.join(self.not_beyond) or 'none'}"
        )


def dominates(a: tuple[float, float], b: tuple[float, float], higher: tuple[bool, bool]) -> bool:
    """``a`` at least as good as ``b`` in both metrics and strictly better in one."""
    better = [(ai > bi) if up else (ai < bi) for ai, bi, up in zip(a, b, higher)]
    worse = [(ai < bi) if up else (ai > bi) for ai, bi, up in zip(a, b, higher)]
    return any(better) and not any(worse)


def is_sweep_config(config: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """A vanilla run whose ``lambda_*`` task weights are not the task's defaults."""
    if config.get("method") != "vanilla":
        return False
    args = config.get("task_args") or {}
    return any(
        key.startswith("lambda_") and key in args and float(args[key]) != float(value)
        for key, value in defaults.items()
    )


def build_front(
    split: str,
    metrics: tuple[str, str],
    higher: tuple[bool, bool],
    sweep: dict[str, tuple[float, float]],
    methods: dict[str, tuple[float, float]],
) -> Front:
    """``sweep``/``methods``: label → (mean x, mean y); NaN points are left out."""

    def finite(p: tuple[float, float]) -> bool:
        return not (math.isnan(p[0]) or math.isnan(p[1]))

    sweep = {k: v for k, v in sweep.items() if finite(v)}
    points = [
        FrontPoint(label, *xy, on_front=not any(dominates(o, xy, higher) for o in sweep.values()))
        for label, xy in sweep.items()
    ]
    front = [(p.x, p.y) for p in points if p.on_front]
    others = [FrontPoint(label, *xy) for label, xy in methods.items() if finite(xy)]
    beyond = [p.label for p in others if any(dominates((p.x, p.y), f, higher) for f in front)]
    not_beyond = [p.label for p in others if p.label not in beyond]
    return Front(split, metrics, higher, points, others, beyond, not_beyond)
