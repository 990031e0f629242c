"""The thyroid multitask model and a fixed synthetic batch, shared by the benchmarks in this folder.

:func:`build_thyroid_step` builds what the trainer builds for ``--task thyroid`` (the task's heads on
a ``unet_small`` encoder: segmentation, TI-RADS classification and the clinically guided radiomics
slice — three tasks) with seeded weights, and a seeded batch of the task's keys. The quick preset is
``size=64, batch=16`` with the default widths; the tests and kernel benchmarks use smaller ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mtlbench.api.method import StepInputs
from mtlbench.model import ModelOutput, MultiTaskModel
from mtlbench.registry import create_backbone, create_task
from mtlbench.tasks.thyroid.radiomics import FEATURE_NAMES
from mtlbench.tasks.thyroid.settings import ThyroidData
from mtlbench.tasks.thyroid.task import ThyroidParams, ThyroidTask

QUICK_WIDTHS = (8, 16, 32, 64, 128)


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict[str, Tensor]:
    """A seeded batch: noise images, a rectangular nodule per sample, grades 0–4, clinical targets."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 1, size, size)
    for i in range(batch):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        mask[i, :, top : top + size // 3, left : left + size // 3] = 1
    return {
        "image": torch.randn(batch, 1, size, size, generator=g),
        "mask": mask,
        "label": torch.randint(0, 5, (batch,), generator=g),
        "clinical": torch.randn(batch, len(FEATURE_NAMES), generator=g),
    }


@dataclass
class ThyroidStep:
    """A model, its task and one batch: everything one training step needs."""

    task: ThyroidTask
    model: MultiTaskModel
    batch: dict[str, Tensor]

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.task.task_names)

    def forward(self) -> tuple[ModelOutput, dict[str, Tensor]]:
        """The model's output and the per-task losses on the batch, the heads run on cut points of
        the features as the trainer runs them (``ModelOutput.head_inputs``)."""
        output = self.model.heads_on_cut_points(list(self.model.backbone(self.batch["image"])))
        return output, self.task.compute_losses(output, self.batch)

    def step_inputs(self, output: ModelOutput, losses: dict[str, Tensor]) -> StepInputs:
        """What the trainer hands a method for this forward pass (fp32, step 0, no diagnostics)."""
        return StepInputs(
            losses=losses,
            weights=self.task.loss_weights(),
            shared_parameters=self.model.shared_parameters(),
            representations=output.representations,
            step=0,
            head_parameters=self.model.head_parameters(),
            head_inputs=output.head_inputs,  # the thyroid heads read nothing else of the encoder
        )

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def gradients(self) -> dict[str, Tensor]:
        """A copy of every parameter's ``.grad`` by name (zeros where a parameter got none)."""
        return {
            name: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
            for name, p in self.model.named_parameters()
        }


def build_thyroid_step(
    size: int = 64,
    batch: int = 16,
    widths: tuple[int, ...] = QUICK_WIDTHS,
    embedding_dim: int = 64,
    classifier_hidden: int = 128,
    seed: int = 0,
) -> ThyroidStep:
    """The thyroid model (``unet_small`` with ``widths``) and a synthetic batch, seeded by ``seed``."""
    params = ThyroidParams(embedding_dim=embedding_dim, classifier_hidden=classifier_hidden)
    task = create_task("thyroid", params, ThyroidData(image_size=size), seed, Path("."))
    torch.manual_seed(seed)
    backbone = create_backbone("unet_small", widths=tuple(widths))
    model = MultiTaskModel(backbone, task.build_heads(backbone.contract))
    model.train()
    return ThyroidStep(task, model, synthetic_batch(batch, size, seed))
