"""A weighting method in one small file: the task-weighted sum, multiplied by a constant."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.api import MultiTaskMethod, StepInputs, detach_float


@dataclass(frozen=True)
class ScaledSumParams:
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"Parameter `scale` should be positive. Found `scale = {self.scale}`.")


class ScaledSum(MultiTaskMethod):
    """Scaled sum: ``scale`` · Σ_t λ_t L_t in one backward pass (a plugin example)."""

    Params = ScaledSumParams

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        total = self.params.scale * inputs.weighted_sum()
        inputs.scale(total).backward()
        return {"loss": detach_float(total)}
