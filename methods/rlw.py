"""RLW — random loss weighting (Lin et al., TMLR 2022, "Reasonable effectiveness of random weighting").

Every step draws a standard-normal vector ε ∈ R^T and trains on::

    λ^RLW = softmax(ε),    loss = Σ_t λ_t^RLW·λ_t·L_t

with λ_t the task's configured weight; the weights sum to 1 (as in the paper's and LibMTL's
normal-distribution variant), not to T. ε comes from a private ``torch.Generator`` seeded by
(seed, step) — ``seed·1_000_003 + step`` — so the sequence of weights depends neither on the global
RNG nor on anything else the run draws, and a resumed run draws exactly the weights an
uninterrupted one would. ``seed = None`` takes the run's seed: ``torch.initial_seed()`` at the
first step (the runner seeds torch with the configured seed before training); the seed in use is
a buffer, so it is checkpointed. ``weight/<task>`` reports λ_t^RLW. The authors' code is LibMTL
(``weighting/RLW.py``, ``dist="Normal"``: softmax of a standard normal draw), whose default this is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.method import MultiTaskMethod, StepInputs, detach_float
from mtlbench.registry import register_method

_UNSET = -1


@dataclass(frozen=True)
class RLWParams:
    """RLW hyper-parameters."""

    seed: int | None = None


def rlw_weights(seed: int, step: int, num_tasks: int) -> Tensor:
    """softmax(ε), ε ~ N(0, I_T) from a generator seeded by (seed, step); float32 on the CPU."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return torch.softmax(torch.randn(num_tasks, generator=gen), dim=0)


@register_method("rlw")
class RLW(MultiTaskMethod):
    """Random loss weighting (Lin 2022): weights softmax(ε), ε ~ N(0, I), drawn afresh every step."""

    Params = RLWParams

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        seed = _UNSET if self.params.seed is None else int(self.params.seed)
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.long))

    def validate(self) -> None:
        check_param("seed", self.params.seed, "int", low=0, allow_none=True)
        check_tasks("RLW", self.task_names)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """RLW has nothing to tune: an empty search space."""
        return {}

    def weights_at(self, step: int) -> Tensor:
        """The RLW weights of ``step`` (fixing the seed from the run's torch seed if not set yet)."""
        if int(self.seed) == _UNSET:
            self.seed.fill_(torch.initial_seed() % 2**62)
        return rlw_weights(int(self.seed), step, len(self.task_names))

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        weights = self.weights_at(inputs.step).tolist()
        total = sum(w * inputs.weights[t] * inputs.losses[t] for w, t in zip(weights, self.task_names))
        inputs.scale(total).backward()  # type: ignore[union-attr]
        logs = {"loss": detach_float(total)}  # type: ignore[arg-type]
        logs.update({f"weight/{t}": w for w, t in zip(weights, self.task_names)})
        return logs
