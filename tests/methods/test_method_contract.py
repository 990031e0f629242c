"""Every registered method on every registered backbone: one training step.

On the example plugin's ``twoshapes`` task (three tasks: a decoder head, and two tasks sharing one
MLP head), so this tests the method contract and not a task family. Finite losses, outputs of the
right shapes, and a gradient on every trainable parameter. New methods and backbones are covered
as soon as they are registered; ``tests/test_task_contract.py`` trains every method on every task.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlbench.api.method import StepInputs
from mtlbench.model import MultiTaskModel
from mtlbench.registry import METHODS, create_backbone, create_task, list_backbones, list_methods
from mtlbench.resolve import _params_from_dataclass
from tests.tiny import SMALL_BACKBONE_OPTIONS


def fake_task(tmp_path: Path):  # type: ignore[no-untyped-def]
    from mtlbench_example_plugin.task import TwoShapesData, TwoShapesParams

    return create_task("twoshapes", TwoShapesParams(), TwoShapesData(image_size=64), 0, tmp_path)


def fake_batch(task, b: int = 2) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    dataset = task.prepare().train
    return {key: torch.stack([dataset[i][key] for i in range(b)]) for key in dataset[0]}


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("method", list_methods())
def test_one_step_reaches_every_parameter(method: str, backbone: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = fake_task(tmp_path)
    bb = create_backbone(backbone, **SMALL_BACKBONE_OPTIONS.get(backbone, {}))
    model = MultiTaskModel(bb, task.build_heads(bb.contract))
    params, _ = _params_from_dataclass(METHODS.get(method).obj.Params, {}, "method_args")
    mtl = METHODS.create(method, task.task_names, params)
    batch = fake_batch(task)
    out = model(batch["image"])
    assert out.outputs["mask"].shape == batch["mask"].shape
    assert out.outputs["level"]["logits"].shape == (2, 3)
    assert out.outputs["level"]["area"].shape == (2,)
    losses = task.compute_losses(out, batch)
    assert set(losses) == set(task.task_names)
    assert all(torch.isfinite(v) for v in losses.values())
    logs = mtl.backward(
        StepInputs(
            losses,
            task.loss_weights(),
            model.shared_parameters(),
            out.representations,
            step=0,
            head_parameters=model.head_parameters(),
        )
    )
    assert all(isinstance(v, float) for v in logs.values())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"


def test_batched_task_gradients_equal_one_backward_per_task(tmp_path: Path) -> None:
    from mtlbench.api.gradients import task_gradient_matrix

    torch.manual_seed(0)
    task = fake_task(tmp_path)
    bb = create_backbone("unet_small", **SMALL_BACKBONE_OPTIONS["unet_small"])
    model = MultiTaskModel(bb, task.build_heads(bb.contract))
    batch = fake_batch(task)
    losses = list(task.compute_losses(model(batch["image"]), batch).values())
    loop = task_gradient_matrix(losses, model.shared_parameters(), batched=False)
    batched = task_gradient_matrix(losses, model.shared_parameters(), batched=True)
    assert loop.shape == (3, sum(p.numel() for p in model.shared_parameters()))
    assert torch.allclose(loop, batched, atol=1e-6)
