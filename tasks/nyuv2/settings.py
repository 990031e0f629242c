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
    #: deepest level; ``segnet``: MTAN's prediction layer on the finest level (for backbone ``segnet``).
    head: Literal["unet", "aspp", "segnet"] = "unet"
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


def presets(name: str) -> dict[str, dict[str, Any]]:
    """``smoke``: the contract tests' run on the tiny fixture. ``libmtl``: LibMTL's DeepLabV3+ setting
    (``examples/nyu``, ``examples/cityscapes``: dilated ResNet-50 with one ASPP head per task, Adam
    1e-4, weight decay 1e-5, 200 epochs, batch 8 on NYUv2 and 64 on Cityscapes, full batches only,
    no augmentation in the documented command). ``segnet`` (NYUv2): the SegNet setting of MTAN's
    ``model_segnet_split.py`` with Nash-MTL's ``experiments/nyuv2`` defaults (Adam 1e-4, no weight
    decay, batch 2, 200 epochs, augmentation on). Neither has the papers' step decay of the learning
    rate (×0.5 after 100 epochs): the common trainer has no schedule."""
    libmtl_batch = 8 if name == "nyuv2" else 64
    train_count = 795 if name == "nyuv2" else 2975
    out: dict[str, dict[str, Any]] = {
        "smoke": {
            "data": {"val_from_train": 0.25},
            "task_args": {"head_width": 16},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "eval_batch_size": 4},
        },
        "libmtl": {
            "backbone": "resnet50_dilated",
            "task_args": {"head": "aspp"},
            "train": {
                "epochs": 200,
                "steps_per_epoch": train_count // libmtl_batch,
                "batch_size": libmtl_batch,
                "eval_batch_size": libmtl_batch,
                "lr": 1e-4,
                "weight_decay": 1e-5,
            },
        },
    }
    if name == "nyuv2":
        out["segnet"] = {
            "backbone": "segnet",
            "data": {"augment": True},
            "task_args": {"head": "segnet"},
            "train": {
                "epochs": 200,
                "steps_per_epoch": -(-train_count // 2),
                "batch_size": 2,
                "eval_batch_size": 8,
                "lr": 1e-4,
                "weight_decay": 0.0,
            },
        }
    return out
