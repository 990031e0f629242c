"""Small settings shared by tests: backbones that build in milliseconds, runs that train in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SMALL_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "unet_small": {"widths": (8, 16, 32, 64)},
    "nnunet_plain": {"n_stages": 4, "features_per_stage": (8, 16, 32, 64)},
    "nnunet_residual": {
        "n_stages": 4,
        "features_per_stage": (8, 16, 32, 64),
        "n_blocks_per_stage": (1, 1, 2, 2),
    },
    "timm": {"model_name": "resnet10t"},
    "resnet50_dilated": {"model_name": "resnet10t"},
    "segnet": {"widths": (4, 8, 8, 16, 16)},
}


def core_run_overrides(tmp_path: Path, **extra: Any) -> list[str]:
    """A run of a few steps of the example plugin's ``twoshapes`` task, writing only under ``tmp_path``.

    The core's own tests (trainer, resume, CLI, method contract) use it, so they test the core and
    not a task family.
    """
    settings: dict[str, Any] = {
        "task": "twoshapes",
        "output_dir": tmp_path / "runs",
        "data.cache_dir": tmp_path / "cache",
        "backbone_args.widths": "[8, 16, 32]",
        "train.epochs": 3,
        "train.steps_per_epoch": 2,
        "train.batch_size": 4,
        "train.eval_batch_size": 8,
        "train.progress": "false",
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


def tiny_run_overrides(tmp_path: Path, **extra: Any) -> list[str]:
    """A thyroid run of a few steps on 32 px phantom images, writing only under ``tmp_path``."""
    settings: dict[str, Any] = {
        "task": "thyroid",
        "output_dir": tmp_path / "runs",
        "data.cache_dir": tmp_path / "cache",
        "data.image_size": 32,
        "data.num_train": 16,
        "data.num_val": 8,
        "data.num_test": 8,
        "data.num_external": 8,
        "data.radiomics_workers": 1,
        "backbone_args.widths": "[8, 16, 32, 64]",
        "task_args.embedding_dim": 24,
        "task_args.classifier_hidden": 16,
        "train.epochs": 3,
        "train.steps_per_epoch": 2,
        "train.batch_size": 4,
        "train.eval_batch_size": 8,
        "train.progress": "false",
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]
