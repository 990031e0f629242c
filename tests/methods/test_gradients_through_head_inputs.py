"""Gradient combination through the heads' inputs equals the plain per-task backward passes.

With ``StepInputs.head_inputs`` (the trainer's cut points of the features) a gradient-combination
method takes each task's gradient through the heads once, head parameters included, and pushes it
from the features into the backbone; without them it takes ``autograd.grad(L_t, shared)`` per task
and one more pass through the heads for their gradient. The trainer's own step must give every
parameter the same ``.grad`` as the plain way — on U-Net-like nested features (an encoder level feeds
the heads and the next level), where a gradient taken with respect to the features themselves would
count the deeper path twice, and on SegNet-MTAN, whose attention heads also read the SegNet's inner
maps: there the trainer must notice that the heads do not read the backbone only through their
inputs and fall back to the plain way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlbench.api.method import StepInputs
from mtlbench.bench.harness import StepHarness, build_harness
from mtlbench.config import resolve_config
from mtlbench.tasks.nyuv2.layout import write_fixture
from tests.tiny import core_run_overrides, tiny_run_overrides

METHODS = ["pcgrad", "cagrad", "mgda", "nash_mtl", "upgrad", "imtl_g", "aligned_mtl", "graddrop"]


def plain_grads(h: StepHarness) -> dict[str, torch.Tensor]:
    """``.grad`` of the method's backward given no cut points: per-task grads of the parameters."""
    trainer = h.trainer
    trainer.model.zero_grad(set_to_none=True)
    output, losses = trainer.forward_losses(h.batch)
    inputs = StepInputs(
        losses,
        trainer.weights,
        trainer.model.shared_parameters(),
        output.representations,
        step=trainer.state.global_step,
        head_parameters=trainer.model.head_parameters(),
    )
    trainer.method.backward(inputs)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def trainer_grads(h: StepHarness) -> dict[str, torch.Tensor]:
    """``.grad`` after the trainer's own step (learning rate 0: the weights do not move)."""
    h.trainer.train_step(h.batch)
    return {n: p.grad.clone() for n, p in h.trainer.model.named_parameters() if p.grad is not None}


def harness(task: str, method: str, tmp_path: Path) -> StepHarness:
    if task == "twoshapes":
        overrides = core_run_overrides(tmp_path)
        preset = None
    elif task == "thyroid":
        overrides = tiny_run_overrides(tmp_path)
        preset = None
    else:  # SegNet, with MTAN's attention heads or the plain SegNet head
        root = write_fixture(tmp_path / "data", "cityscapes", {"train": 4, "val": 2})
        overrides = [
            f"data.root={root}",
            f"output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'c'}",
            "backbone_args.widths=[4, 8, 8, 16, 16]",
            "train.batch_size=2",
            "data.val_from_train=0.25",
        ]
        if task == "segnet_plain":
            overrides.append("task_args.head=segnet")
        task, preset = "cityscapes", "segnet_mtan"
    cfg = resolve_config(
        [*overrides, "train.lr=0", "train.weight_decay=0"], method=method, task=task, preset=preset
    )
    return build_harness(cfg)


@pytest.mark.parametrize("task", ["twoshapes", "thyroid", "segnet_mtan", "segnet_plain"])
@pytest.mark.parametrize("method", METHODS)
def test_the_trainers_step_equals_the_plain_per_task_gradients(tmp_path, method: str, task: str) -> None:
    h = harness(task, method, tmp_path)
    fast = trainer_grads(h)
    plain = plain_grads(h)
    uses_cut_points = h.trainer._cut_points_valid
    assert uses_cut_points is (task != "segnet_mtan")
    assert fast.keys() == plain.keys() and len(fast) == len(list(h.trainer.model.parameters()))
    # A parameter whose true gradient is zero (a bias before a normalisation) holds rounding noise
    # of ~1e-11: the absolute tolerance is relative to the largest gradient of the model. G is summed
    # in another order, and the weights of MGDA's and Nash-MTL's solvers follow its rounding: measured
    # up to 4e-5 relative on the SegNet (2e-7 for PCGrad), hence 1e-4.
    scale = max(float(g.abs().max()) for g in plain.values())
    for name in plain:
        assert torch.allclose(fast[name], plain[name], rtol=1e-4, atol=1e-6 * scale), name


def test_cut_points_that_are_the_features_themselves_would_count_twice(tmp_path) -> None:
    """The reason for the views: with the features themselves as ``head_inputs`` the per-task
    gradient of a shallow encoder level also holds the path through the deeper levels, which the
    push into the encoder then counts a second time."""
    h = harness("thyroid", "pcgrad", tmp_path)
    trainer = h.trainer
    trainer.model.zero_grad(set_to_none=True)
    output, losses = trainer.forward_losses(h.batch)
    features = [x._base if x._base is not None else x for x in output.head_inputs]
    inputs = StepInputs(
        losses,
        trainer.weights,
        trainer.model.shared_parameters(),
        output.representations,
        step=0,
        head_parameters=trainer.model.head_parameters(),
        head_inputs=features,
    )
    trainer.method.backward(inputs)
    wrong = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    plain = plain_grads(h)
    assert any(not torch.allclose(wrong[n], plain[n], rtol=1e-3) for n in plain if n.startswith("backbone."))


@pytest.mark.parametrize(("task", "deepest_is_cut_point"), [("thyroid", True), ("segnet_plain", False)])
def test_the_bottleneck_representation_keeps_its_total_derivative(
    tmp_path, task: str, deepest_is_cut_point: bool
) -> None:
    """An encoder's deepest level feeds only the heads, so its cut point has the total gradient; a
    SegNet's decoder levels are computed from its bottleneck, so the bottleneck stays its own tensor
    and ∇_z L includes the path through the SegNet's decoder."""
    h = harness(task, "rlar", tmp_path)
    output, losses = h.trainer.forward_losses(h.batch)
    z = output.representations["bottleneck"]
    assert (z is output.head_inputs[-1]) is deepest_is_cut_point
    total = torch.autograd.grad(sum(losses.values()), z, retain_graph=True)[0]
    (through_heads,) = torch.autograd.grad(
        sum(losses.values()), output.head_inputs[-1], retain_graph=True, allow_unused=True
    )
    through_heads = torch.zeros_like(total) if through_heads is None else through_heads
    assert float(total.abs().max()) > 0
    assert torch.allclose(total, through_heads) is deepest_is_cut_point
