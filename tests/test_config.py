"""Configuration: defaults, presets, files, overrides, type checks and the run id."""

from __future__ import annotations

import pytest

from mtlbench.config import PRESETS, ConfigError, parse_overrides, resolve_config
from mtlbench.resolve import resolve_run


def test_defaults_are_the_quick_preset() -> None:
    cfg = resolve_config()
    assert cfg.preset == "quick"
    assert (cfg.task, cfg.method, cfg.backbone) == ("thyroid", "rlar", "unet_small")
    assert cfg.data.root is None and cfg.data.format == "phantom"


def test_paper_preset_matches_the_paper() -> None:
    cfg = resolve_config(preset="paper")
    t = cfg.train
    assert (t.lr, t.batch_size, t.steps_per_epoch, t.val_steps, t.epochs) == (1e-4, 8, 250, 50, 500)
    assert t.amp == "auto"  # mixed precision on a GPU
    assert cfg.backbone == "nnunet_plain"


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
        resolve_config(preset="papr")
    assert set(PRESETS) >= {"quick", "paper"}


def test_registry_sections_are_checked_and_filled() -> None:
    resolved = resolve_run(resolve_config(["method_args.lambda_adv=0.5"]))
    assert resolved.config.method_args == {"lambda_adv": 0.5, "representation": "bottleneck"}
    assert resolved.method_params.lambda_adv == 0.5
    assert "embedding_dim" in resolved.config.task_args
    assert "widths" in resolved.config.backbone_args
    with pytest.raises(ConfigError, match="did you mean method_args.lambda_adv"):
        resolve_run(resolve_config(["method_args.lambda_ad=0.5"]))
    with pytest.raises(ConfigError, match="method_args.representation: 'neck' is not one of"):
        resolve_run(resolve_config(["method_args.representation=neck"]))
    with pytest.raises(ConfigError, match="backbone_args"):
        resolve_run(resolve_config(["backbone_args.depth=3"]))


def test_run_id_is_the_hash_of_the_resolved_config() -> None:
    a = resolve_run(resolve_config()).run_id
    b = resolve_run(resolve_config(["method_args.lambda_adv=0.1"])).run_id  # the default, spelled out
    c = resolve_run(resolve_config(["method_args.lambda_adv=0.2"])).run_id
    d = resolve_run(resolve_config(["output_dir=elsewhere", "train.progress=false"])).run_id
    assert a == b == d
    assert a != c
    assert len(a) == 10
