"""The multidigits task: settings validation, heads and losses on two backbones, a run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtlbench.config import ConfigError, resolve_config
from mtlbench.errors import DataError
from mtlbench.runner import prepare_run, run_experiment
from mtlbench.tasks.multidigits.settings import MultiDigitsData
from mtlbench.tasks.multidigits.task import MultiDigitsParams, MultiDigitsTask


def _task(tmp_path: Path, params: MultiDigitsParams | None = None, **data: object) -> MultiDigitsTask:
    return MultiDigitsTask(params or MultiDigitsParams(), MultiDigitsData(**data), 0, tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ("left", "middle")}, r"task_args.tasks must be a non-empty subset .*'middle'"),
        ({"tasks": ()}, r"task_args.tasks must be a non-empty subset"),
        ({"lambda_map": -1.0}, r"task_args.lambda_map must be a finite number >= 0, got -1.0"),
        ({"lambda_left": float("nan")}, r"task_args.lambda_left must be a finite number >= 0, got nan"),
        ({"pool_grid": 0}, r"task_args.pool_grid must be at least 1, got 0"),
    ],
)
def test_bad_task_args_name_the_key_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiDigitsParams(**kwargs)


def test_bad_task_args_from_the_command_line_are_config_errors(tmp_path: Path) -> None:
    cfg = resolve_config(["task_args.lambda_right=-2", f"output_dir={tmp_path}"], task="multidigits")
    with pytest.raises(ConfigError, match="task_args.lambda_right must be a finite number >= 0, got -2.0"):
        prepare_run(cfg)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"format": "emnist"},
            r"unknown data.format 'emnist' for task multidigits \(available: digits, mnist\)",
        ),
        ({"root": "/somewhere"}, r"data.root is set to '/somewhere' but data.format is 'digits'"),
        ({"format": "mnist"}, r"data.format is 'mnist' but data.root is not set"),
        ({"format": "mnist", "root": "/no/such/dir"}, r"data.root '/no/such/dir' is not a folder"),
        (
            {"canvas_size": 22},
            r"data.canvas_size 22 is smaller than data.digit_size \+ data.max_offset \(20 \+ 4\)",
        ),
        ({"digit_size": 2}, r"data.digit_size must be at least 4, got 2"),
        ({"max_offset": -1}, r"data.max_offset must be >= 0, got -1"),
        ({"ink_threshold": 0.0}, r"data.ink_threshold must be in \(0, 1\], got 0.0"),
        ({"num_val": 0}, r"data.num_val must be at least 1, got 0"),
        ({"num_test": -3}, r"data.num_test must be >= 0, got -3"),
        ({"val_fraction": 1.5}, r"data.val_fraction must be in \(0, 1\), got 1.5"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"data.val_fraction \+ data.test_fraction must be below 1",
        ),
        ({"augment": True}, r"data.augment=true is not supported by multidigits"),
        (
            {"folds": 3, "fold": 3},
            r"data.folds must be >= 2 and 0 <= data.fold < data.folds, got folds=3, fold=3",
        ),
        ({"reader_options": {"x": 1}}, r"data.reader_options: multidigits takes none, got \['x'\]"),
    ],
)
def test_bad_data_settings_name_the_key_and_value(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _task(tmp_path, **data).check_data()
    assert not any(tmp_path.iterdir()), "check_data wrote something"


def test_mnist_root_without_the_files_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MNIST file train-images-idx3-ubyte"):
        _task(tmp_path / "cache", format="mnist", root=str(tmp_path)).check_data()


@pytest.mark.parametrize(
    ("backbone", "options"),
    [("unet_small", []), ("timm", ["backbone_args.model_name=resnet18"])],
)
def test_heads_and_losses_on_the_default_and_a_timm_backbone(
    tmp_path: Path, backbone: str, options: list
) -> None:
    # 32 px: a multiple of unet_small's deepest stride (16) and of resnet18's (32)
    cfg = resolve_config(
        [f"output_dir={tmp_path}", f"data.cache_dir={tmp_path}", *options],
        task="multidigits",
        method="rlar",
        backbone=backbone,
        preset="smoke",
    )
    prepared = prepare_run(cfg)
    task, model = prepared.task, prepared.model
    assert model.backbone.contract.in_channels == task.input_channels() == 1
    assert task.input_size() == (32, 32)
    splits = task.prepare(progress=False)
    batch = {k: torch.stack([splits.train[i][k] for i in range(3)]) for k in splits.train[0]}
    out = model(batch["image"])
    assert out.outputs["left"].shape == out.outputs["right"].shape == (3, 10)
    assert out.outputs["map"].shape == (3, 3, 32, 32)
    losses = task.compute_losses(out, batch)
    assert set(losses) == {"left", "right", "map"} and all(torch.isfinite(v) for v in losses.values())
    # untrained: near the uniform cross-entropy log(10) and log(3)
    assert float(losses["left"].detach()) == pytest.approx(2.30, abs=0.5)
    assert float(losses["map"].detach()) == pytest.approx(1.10, abs=0.5)


def test_single_task_baselines_build_only_their_head(tmp_path: Path) -> None:
    task = _task(tmp_path, MultiDigitsParams(tasks=("map",), lambda_map=0.5))
    assert task.task_names == ("map",) and task.loss_weights() == {"map": 0.5}
    assert MultiDigitsTask(
        MultiDigitsParams(tasks=("right", "left")), MultiDigitsData(), 0, tmp_path
    ).task_names == (
        "left",
        "right",
    )


def test_a_tiny_pcgrad_run_end_to_end(tmp_path: Path) -> None:
    cfg = resolve_config(
        [
            f"output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.num_train=24",
            "data.num_val=8",
            "data.num_test=8",
            "backbone_args.widths=[8, 16, 32, 64]",
            "train.epochs=1",
            "train.steps_per_epoch=2",
            "train.batch_size=4",
            "train.progress=false",
        ],
        task="multidigits",
        method="pcgrad",
    )
    outcome = run_experiment(cfg)
    root = outcome.folder.root
    assert root.parent == tmp_path / "runs" / "multidigits"
    result = json.loads((root / "result.json").read_text())
    assert result["steps"] == 2 and result["monitor"]["metric"] == "score"
    for split in ("val", "test"):
        for key in ("left_accuracy", "right_accuracy", "map_miou", "map_pixel_accuracy", "score"):
            assert 0.0 <= result["metrics"][split][key] <= 1.0, (split, key)
    assert result["data"]["composites"] == {"train": 24, "val": 8, "test": 8}
    assert (tmp_path / "cache" / "multidigits").is_dir()
    first = json.loads((root / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss/left", "loss/right", "loss/map", "diag_cos/left-map"} <= set(first["train"])
