"""Every registered method on every registered backbone with the thyroid heads: one training step.

Finite losses, outputs of the right shapes, and a gradient on every trainable parameter. New
methods and backbones are covered as soon as they are registered.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlbench.config import DataConfig
from mtlbench.methods.base import StepInputs
from mtlbench.model import MultiTaskModel
from mtlbench.registry import METHODS, create_backbone, create_task, list_backbones, list_methods
from mtlbench.resolve import _params_from_dataclass
from mtlbench.tasks.thyroid.task import ThyroidParams
from tests.tiny import SMALL_BACKBONE_OPTIONS


def thyroid_batch(b: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    return {
        "image": torch.randn(b, 1, size, size, generator=g),
        "mask": mask,
        "label": torch.tensor([0, 3])[:b],
        "clinical": torch.randn(b, 13, generator=g),
    }


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("method", list_methods())
def test_one_step_reaches_every_parameter(method: str, backbone: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = create_task(
        "thyroid", ThyroidParams(embedding_dim=24, classifier_hidden=16), DataConfig(), 0, tmp_path
    )
    bb = create_backbone(backbone, **SMALL_BACKBONE_OPTIONS.get(backbone, {}))
    model = MultiTaskModel(bb, task.build_heads(bb.contract))
    params, _ = _params_from_dataclass(METHODS.get(method).obj.Params, {}, "method_args")
    mtl = METHODS.create(method, task.task_names, params)
    batch = thyroid_batch()
    out = model(batch["image"])
    assert out.outputs["seg"].shape == batch["mask"].shape
    assert out.outputs["cls"]["logits"].shape == (2, 5)
    assert out.outputs["cls"]["h_tirads"].shape == (2, 13)
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
    from mtlbench.methods.gradient_combination import task_gradient_matrix

    torch.manual_seed(0)
    task = create_task(
        "thyroid", ThyroidParams(embedding_dim=24, classifier_hidden=16), DataConfig(), 0, tmp_path
    )
    bb = create_backbone("unet_small", **SMALL_BACKBONE_OPTIONS["unet_small"])
    model = MultiTaskModel(bb, task.build_heads(bb.contract))
    batch = thyroid_batch()
    losses = list(task.compute_losses(model(batch["image"]), batch).values())
    loop = task_gradient_matrix(losses, model.shared_parameters(), batched=False)
    batched = task_gradient_matrix(losses, model.shared_parameters(), batched=True)
    assert loop.shape == (3, sum(p.numel() for p in model.shared_parameters()))
    assert torch.allclose(loop, batched, atol=1e-6)
