"""Configuration: defaults, the task's presets and data section, files, overrides, type checks, run id.

On the example plugin's ``twoshapes`` task (the core's), except where a thyroid preset is the subject.
"""

from __future__ import annotations

import functools

import pytest

from mtlbench.config import DataConfig, RunConfig, TrainConfig, parse_overrides
from mtlbench.config import resolve_config as resolve_any_task
from mtlbench.errors import ConfigError
from mtlbench.resolve import resolve_run

resolve_config = functools.partial(resolve_any_task, task="twoshapes")


def test_defaults_are_the_quick_preset_and_the_task_owns_its_data_section() -> None:
    cfg = resolve_config()
    assert cfg.preset == "quick"
    assert (cfg.task, cfg.method, cfg.backbone) == ("twoshapes", "vanilla", "unet_small")
    assert type(cfg.data).__name__ == "TwoShapesData" and isinstance(cfg.data, DataConfig)
    assert cfg.data.root is None and cfg.data.image_size == 32
    assert cfg.train.epochs == 2  # the task's quick preset
    assert cfg.train.monitor is None  # filled with the task's default by resolve_run
    resolved = resolve_run(cfg).config
    assert (resolved.train.monitor, resolved.train.monitor_mode) == ("score", "max")


def test_the_core_holds_only_what_every_task_shares() -> None:
    core = {f for f in DataConfig.__dataclass_fields__}
    assert core == {
        "root",
        "format",
        "cache_dir",
        "num_workers",
        "folds",
        "fold",
        "fold_seed",
        "reader_options",
        "augment",
    }
    assert RunConfig().task == "" and TrainConfig().monitor is None


def test_a_task_is_required() -> None:
    with pytest.raises(ConfigError, match="no task given"):
        resolve_any_task()


def test_data_keys_of_another_task_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'data.num_external'"):
        resolve_config(["data.num_external=3"])
    assert resolve_any_task(["data.num_external=3"], task="thyroid").data.num_external == 3


def test_paper_preset_is_thyroids() -> None:
    cfg = resolve_any_task(task="thyroid", preset="paper")
    t = cfg.train
    assert (t.lr, t.batch_size, t.steps_per_epoch, t.val_steps, t.epochs) == (1e-4, 8, 250, None, 500)
    assert t.amp == "auto"  # mixed precision on a GPU
    assert cfg.backbone == "nnunet_plain" and cfg.data.image_size == 512 and cfg.data.augment
    with pytest.raises(ConfigError, match="unknown preset 'paper' for task 'twoshapes'"):
        resolve_config(preset="paper")


def test_non_identity_data_fields_stay_out_of_the_run_id() -> None:
    a = resolve_run(resolve_any_task(task="thyroid")).run_id
    b = resolve_run(
        resolve_any_task(["data.radiomics_workers=3", "data.num_workers=2"], task="thyroid")
    ).run_id
    c = resolve_run(resolve_any_task(["data.num_train=30"], task="thyroid")).run_id
    assert a == b != c


def test_overrides_are_typed() -> None:
    cfg = resolve_config(
        ["train.epochs=3", "train.lr=1e-3", "train.grad_clip=none", "train.betas=[0.8, 0.9]"]
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.grad_clip is None
    assert cfg.train.betas == (0.8, 0.9)


def test_file_then_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("method: vanilla\ntrain:\n  epochs: 7\n  batch_size: 4\n")
    cfg = resolve_config(["train.epochs=2"], config_file=path)
    assert cfg.method == "vanilla" and cfg.train.epochs == 2 and cfg.train.batch_size == 4


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epoch=3", "did you mean train.epochs"),
        ("trian.epochs=3", "did you mean train"),
        ("train.epochs=three", "train.epochs: expected an integer, got 'three'"),
        ("train.amp=fp8", "train.amp: 'fp8' is not one of"),
        ("train.progress=maybe", "expected a boolean"),
        ("data.image_size=1.5", "data.image_size: expected an integer"),
        ("data.folds=two", "data.folds: expected"),
    ],
)
def test_bad_overrides_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        resolve_config([override])
    assert fragment in str(info.value)


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["train..epochs=1"])


def test_missing_config_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        resolve_config(config_file=tmp_path / "nope.yaml")


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        resolve_any_task(task="thyroid", preset="papr")


def test_registry_sections_are_checked_and_filled() -> None:
    resolved = resolve_run(resolve_config(["method_args.lambda_adv=0.5"], method="rlar"))
    assert resolved.config.method_args == {
        "lambda_adv": 0.5,
        "representation": "bottleneck",
        "every": 1,
        "subset": None,
        "seed": None,
    }
    assert resolved.method_params.lambda_adv == 0.5
    assert resolved.config.task_args == {
        "levels": 3,
        "lambda_mask": 1.0,
        "lambda_level": 1.0,
        "lambda_area": 1.0,
    }
    assert "widths" in resolved.config.backbone_args
    with pytest.raises(ConfigError, match="did you mean method_args.lambda_adv"):
        resolve_run(resolve_config(["method_args.lambda_ad=0.5"], method="rlar"))
    with pytest.raises(ConfigError, match="method_args.representation: 'neck' is not one of"):
        resolve_run(resolve_config(["method_args.representation=neck"], method="rlar"))
    with pytest.raises(ConfigError, match="backbone_args"):
        resolve_run(resolve_config(["backbone_args.depth=3"]))


def test_run_id_is_the_hash_of_the_resolved_config() -> None:
    a = resolve_run(resolve_config(method="rlar")).run_id
    b = resolve_run(resolve_config(["method_args.lambda_adv=0.1"], method="rlar")).run_id  # the default
    c = resolve_run(resolve_config(["method_args.lambda_adv=0.2"], method="rlar")).run_id
    d = resolve_run(resolve_config(["output_dir=elsewhere", "train.progress=false"], method="rlar")).run_id
    assert a == b == d
    assert a != c
    assert len(a) == 10
