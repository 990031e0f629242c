"""The papers' two architectures on the fixture: LibMTL's dilated ResNet + ASPP heads, MTAN's SegNet."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mtlbench.backbones.contract import FeatureContract, FeatureLevel
from mtlbench.config import resolve_config
from mtlbench.runner import run_experiment
from mtlbench.tasks.nyuv2.heads import ASPPHead, SegNetHead
from mtlbench.tasks.nyuv2.layout import write_fixture


def test_aspp_head_has_libmtls_branches_and_predicts_at_input_size() -> None:
    contract = FeatureContract((FeatureLevel(8, 2), FeatureLevel(32, 8)), in_channels=3)
    head = ASPPHead(contract, out_channels=13, width=16)
    dilations = [
        m.dilation[0] for branch in head.branches for m in branch.modules() if isinstance(m, nn.Conv2d)
    ]
    assert dilations == [1, 12, 24, 36]
    assert isinstance(head.pooling[0], nn.AdaptiveAvgPool2d)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in head.project)
    head.eval()
    out = head([torch.randn(2, 8, 20, 28), torch.randn(2, 32, 5, 7)])
    assert out.shape == (2, 13, 40, 56)
    group = ASPPHead(contract, out_channels=1, width=16, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    with pytest.raises(ValueError, match="Parameter `norm`"):
        ASPPHead(contract, 1, norm="layer")


def test_segnet_head_reads_the_finest_level() -> None:
    contract = FeatureContract((FeatureLevel(4, 1), FeatureLevel(8, 2)), in_channels=3)
    head = SegNetHead(contract, out_channels=3)
    assert head([torch.randn(1, 4, 8, 16), torch.randn(1, 8, 4, 8)]).shape == (1, 3, 8, 16)


@pytest.mark.parametrize(
    ("task", "backbone", "extra"),
    [
        ("nyuv2", "resnet50_dilated", ["backbone_args.model_name=resnet10t", "task_args.head=aspp"]),
        ("cityscapes", "resnet50_dilated", ["backbone_args.model_name=resnet10t", "task_args.head=aspp"]),
        (
            "nyuv2",
            "segnet",
            ["backbone_args.widths=[4, 8, 8, 16, 16]", "task_args.head=segnet", "data.augment=true"],
        ),
    ],
)
def test_the_papers_architectures_train_on_the_fixture(
    task: str, backbone: str, extra: list[str], tmp_path: Path
) -> None:
    root = write_fixture(tmp_path / "data", task, {"train": 4, "val": 2})
    overrides = [
        f"data.root={root}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'c'}",
        "train.progress=false",
        "task_args.head_width=16",
        *extra,
    ]
    cfg = resolve_config(overrides, task=task, method="vanilla", backbone=backbone, preset="smoke")
    result = run_experiment(cfg).result
    assert result["steps"] > 0
    assert all(math.isfinite(result["metrics"][split]["miou"]) for split in ("val", "test"))


@pytest.mark.parametrize(
    ("task", "preset", "small"),
    [
        ("nyuv2", "libmtl", ["backbone_args.model_name=resnet10t"]),
        ("cityscapes", "libmtl", ["backbone_args.model_name=resnet10t"]),
        ("nyuv2", "segnet", ["backbone_args.widths=[4, 8, 8, 16, 16]"]),
        ("nyuv2", "segnet_mtan", ["backbone_args.widths=[4, 8, 8, 16, 16]"]),
        ("cityscapes", "segnet_mtan", ["backbone_args.widths=[4, 8, 8, 16, 16]"]),
    ],
)
def test_the_papers_presets_run_as_documented(
    task: str, preset: str, small: list[str], tmp_path: Path
) -> None:
    """The README's one-command settings, cut to one step on the fixture."""
    root = write_fixture(tmp_path / "data", task, {"train": 4, "val": 2})
    overrides = [f"data.root={root}", "data.val_from_train=0", f"output_dir={tmp_path / 'runs'}"]
    cfg = resolve_config(overrides, task=task, method="nash_mtl", preset=preset)
    expected = {
        "libmtl": ("resnet50_dilated", "aspp", 1e-5),
        "segnet": ("segnet", "segnet", 0.0),
        "segnet_mtan": ("segnet", "mtan", 0.0),
    }[preset]
    assert (cfg.backbone, cfg.task_args["head"], cfg.train.weight_decay) == expected
    assert cfg.train.epochs == 200 and cfg.train.lr == 1e-4 and cfg.data.augment == (preset != "libmtl")
    assert (cfg.train.optimizer, cfg.train.lr_schedule, cfg.train.lr_step_epochs, cfg.train.lr_gamma) == (
        "adam",
        "step",
        100,
        0.5,
    )
    if preset != "libmtl":  # Nash-MTL's and FAMO's batch sizes; an epoch covers the training set
        assert cfg.train.batch_size == {"nyuv2": 2, "cityscapes": 8}[task]
        assert cfg.train.steps_per_epoch == {"nyuv2": 398, "cityscapes": 372}[task]
    short = ["train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=2", "task_args.head_width=16"]
    cfg = resolve_config(
        [*overrides, *short, *small, "train.progress=false"], task=task, method="nash_mtl", preset=preset
    )
    result = run_experiment(cfg).result
    assert result["steps"] == 1 and math.isfinite(result["metrics"]["val"]["abs_err"])
