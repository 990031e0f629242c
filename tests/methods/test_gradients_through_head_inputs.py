"""Gradient combination through the heads' inputs equals the plain per-task backward passes.

With ``StepInputs.head_inputs`` (the trainer's cut points of the features) a gradient-combination
method takes each task's gradient through the heads once, head parameters included, and pushes it
from the features into the backbone; without them it takes ``autograd.grad(L_t, shared)`` per task
and one more pass through the heads for their gradient. Both must give every parameter the same
``.grad`` — on U-Net-like nested features (an encoder level feeds the heads and the next level),
where a gradient taken with respect to the features themselves would count the deeper path twice.
"""

from __future__ import annotations

import pytest
import torch

from mtlbench.api.method import StepInputs
from mtlbench.bench.harness import build_harness
from mtlbench.config import resolve_config
from tests.tiny import core_run_overrides, tiny_run_overrides

METHODS = ["pcgrad", "cagrad", "mgda", "nash_mtl", "upgrad", "imtl_g", "aligned_mtl", "graddrop"]


def grads_of(trainer, with_head_inputs: bool) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    model = trainer.model
    model.zero_grad(set_to_none=True)
    output, losses = trainer.forward_losses(trainer_batch[id(trainer)])
    inputs = StepInputs(
        losses,
        trainer.weights,
        model.shared_parameters(),
        output.representations,
        step=3,
        head_parameters=model.head_parameters(),
        head_inputs=output.head_inputs if with_head_inputs else (),
    )
    trainer.method.backward(inputs)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


trainer_batch: dict[int, dict[str, torch.Tensor]] = {}


@pytest.mark.parametrize("task", ["twoshapes", "thyroid"])
@pytest.mark.parametrize("method", METHODS)
def test_same_gradients_with_and_without_head_inputs(tmp_path, method: str, task: str) -> None:
    overrides = core_run_overrides(tmp_path) if task == "twoshapes" else tiny_run_overrides(tmp_path)
    harness = build_harness(resolve_config(overrides, method=method, task=task))
    trainer_batch[id(harness.trainer)] = harness.batch
    fast = grads_of(harness.trainer, True)
    plain = grads_of(harness.trainer, False)
    assert fast.keys() == plain.keys() and len(fast) == len(list(harness.trainer.model.parameters()))
    # a parameter whose true gradient is zero (a bias before a normalisation) holds rounding noise
    # of ~1e-11: the absolute tolerance is relative to the largest gradient of the model
    scale = max(float(g.abs().max()) for g in plain.values())
    for name in plain:
        assert torch.allclose(fast[name], plain[name], rtol=1e-5, atol=1e-6 * scale), name
