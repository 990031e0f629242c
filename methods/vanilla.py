"""Vanilla multitask learning (equal/fixed weighting, "EW")."""

from __future__ import annotations

from mtlbench.api.method import MultiTaskMethod, StepInputs, detach_float
from mtlbench.registry import register_method


@register_method("vanilla")
class Vanilla(MultiTaskMethod):
    """Weighted sum of the task losses with the task's fixed weights (one backward pass)."""

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        total = inputs.weighted_sum()
        inputs.scale(total).backward()
        return {"loss": detach_float(total)}
