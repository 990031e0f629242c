"""Settings of the dense scene tasks: ``task_args`` (Params), ``data`` (Data) and the presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from mtlbench.config import DataConfig


@dataclass(frozen=True)
class DenseParams:
    """Which tasks to train, their loss weights, the heads, and the single-task runs for Δm%."""

    #: All of the benchmark's tasks (multitask), or one for a single-task baseline.
    tasks: tuple[str, ...] = ()
    lambda_seg: float = 1.0
    lambda_depth: float = 1.0
    lambda_normal: float = 1.0
    #: ``unet``: the core's U-Net decoder over every level; ``aspp``: LibMTL's DeepLab head on the
    #: deepest level; ``segnet``: MTAN's prediction layer on the finest level (for backbone ``segnet``);
    #: ``mtan``: MTAN's task attention over every block of backbone ``segnet``, then that layer.
    head: Literal["unet", "aspp", "segnet", "mtan"] = "unet"
    #: Channels of the ASPP head; the widest stage of the U-Net decoder.
    head_width: int = 256
    #: Normalisation in the ASPP head (LibMTL: batch).
    head_norm: Literal["batch", "group"] = "batch"
    #: ``result.json`` files (or run folders) of single-task runs of this benchmark, together covering
    #: every trained task once: each evaluation then reports Δm% against them (``delta_m``).
    baselines: tuple[str, ...] = ()

    #: The benchmark's tasks (set by each subclass).
    available = ("seg", "depth", "normal")

    def __post_init__(self) -> None:
        if not self.tasks:
            object.__setattr__(self, "tasks", self.available)
        unknown = [t for t in self.tasks if t not in self.available]
        if unknown or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(
                f"task_args.tasks must be a non-empty subset of {list(self.available)} without repeats, "
                f"got {list(self.tasks)}"
            )
        for key in ("lambda_seg", "lambda_depth", "lambda_normal"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"task_args.{key} must be a finite number >= 0, got {value}")
        if self.head_width < 1:
            raise ValueError(f"task_args.head_width must be at least 1, got {self.head_width}")


@dataclass(frozen=True)
class NYUv2Params(DenseParams):
    available = ("seg", "depth", "normal")


@dataclass(frozen=True)
class CityscapesParams(DenseParams):
    available = ("seg", "depth")


@dataclass
class DenseData(DataConfig):
    """``root``: the preprocessed data set (``<root>/{train,val}/{image,label,depth[,normal]}/<i>.npy``).

    The papers train on all of ``train`` and report — and, where they select at all, select on —
    ``val``, their test split. Here ``val_from_train`` (a fraction) of ``train`` is held out, seeded by
    ``split_seed``, for model selection: the run's ``val`` split is that part, and the official
    ``val`` folder is reported as the run's ``test`` split, never used for selection. Set
    ``val_from_train=0`` for the papers' protocol: all of ``train`` is trained on and the official
    ``val`` folder is the run's ``val`` split (the best checkpoint is then chosen on it).
    """

    val_from_train: float = 0.1
    split_seed: int = 0


#: The MTAN line of papers (MTAN, CAGrad, Nash-MTL, FAMO): Adam 1e-4 halved after 100 of 200 epochs.
PAPER_SCHEDULE: dict[str, Any] = {
    "epochs": 200,
    "lr": 1e-4,
    "optimizer": "adam",
    "lr_schedule": "step",
    "lr_step_epochs": 100,
    "lr_gamma": 0.5,
}


def presets(name: str) -> dict[str, dict[str, Any]]:
    """``smoke``: the contract tests' run on the tiny fixture.

    ``segnet_mtan``: the SegNet+MTAN setting of the 200-epoch papers' tables (MTAN, CAGrad, Nash-MTL,
    FAMO, and LibMTL's SegNet runs): backbone ``segnet`` with MTAN's attention heads, Adam 1e-4
    without weight decay, halved after 100 of 200 epochs, augmentation on, batch 2 (NYUv2) or 8
    (Cityscapes) as in Nash-MTL's and FAMO's ``experiments/*/trainer.py``; an epoch is as many
    batches as the training set holds (drawn with replacement by the common trainer, where the
    papers shuffle without).

    ``libmtl``: LibMTL's DeepLabV3+ setting (``examples/nyu``, ``examples/cityscapes``: dilated
    ResNet-50 with one ASPP head per task, Adam 1e-4 with L2 weight decay 1e-5, halved after 100 of
    200 epochs, batch 8 on NYUv2 and 64 on Cityscapes, full batches only, no augmentation in the
    documented command).

    ``segnet`` (NYUv2): MTAN's attention-free SegNet split (``model_segnet_split.py``) under the
    ``segnet_mtan`` schedule and batch."""
    batch = 2 if name == "nyuv2" else 8
    libmtl_batch = 8 if name == "nyuv2" else 64
    train_count = 795 if name == "nyuv2" else 2975
    paper = {
        **PAPER_SCHEDULE,
        "steps_per_epoch": -(-train_count // batch),
        "batch_size": batch,
        "eval_batch_size": 8,
        "weight_decay": 0.0,
    }
    out: dict[str, dict[str, Any]] = {
        "smoke": {
            "data": {"val_from_train": 0.25},
            "task_args": {"head_width": 16},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "eval_batch_size": 4},
        },
        "segnet_mtan": {
            "backbone": "segnet",
            "data": {"augment": True},
            "task_args": {"head": "mtan"},
            "train": dict(paper),
        },
        "libmtl": {
            "backbone": "resnet50_dilated",
            "task_args": {"head": "aspp"},
            "train": {
                **PAPER_SCHEDULE,
                "steps_per_epoch": train_count // libmtl_batch,
                "batch_size": libmtl_batch,
                "eval_batch_size": libmtl_batch,
                "weight_decay": 1e-5,
            },
        },
    }
    if name == "nyuv2":
        out["segnet"] = {
            "backbone": "segnet",
            "data": {"augment": True},
            "task_args": {"head": "segnet"},
            "train": dict(paper),
        }
    return out
