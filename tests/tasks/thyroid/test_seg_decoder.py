"""``task_args.seg_decoder``: the bilinear U-Net decoder or nnU-Net's (transposed-conv upsampling)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtlbench.backbones.contract import FeatureContract, FeatureLevel
from mtlbench.config import ConfigError, resolve_config
from mtlbench.resolve import resolve_run
from mtlbench.tasks.thyroid.settings import ThyroidData
from mtlbench.tasks.thyroid.task import ThyroidParams, ThyroidTask
from tests.tiny import SMALL_BACKBONE_OPTIONS


def test_the_setting_builds_the_decoder_it_names() -> None:
    contract = FeatureContract((FeatureLevel(4, 1), FeatureLevel(8, 2), FeatureLevel(16, 4)))
    small = {"embedding_dim": 24, "classifier_hidden": 16}
    default = ThyroidTask(ThyroidParams(**small), ThyroidData(), 0, cache_dir=".").build_heads(contract)
    assert ThyroidParams().seg_decoder == "bilinear" and not hasattr(default["seg"].decoder, "transpconvs")
    params = ThyroidParams(**small, seg_decoder="nnunet")
    heads = ThyroidTask(params, ThyroidData(), 0, cache_dir=".").build_heads(contract)
    assert len(heads["seg"].decoder.transpconvs) == 2
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    assert heads["seg"](feats).shape == (2, 1, 16, 16)


def test_the_paper_preset_uses_nnunets_decoder() -> None:
    assert resolve_run(resolve_config(task="thyroid", preset="paper")).task_params.seg_decoder == "nnunet"
    assert resolve_run(resolve_config(task="thyroid")).task_params.seg_decoder == "bilinear"


def test_an_unknown_decoder_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"task_args.seg_decoder must be one of \['bilinear', 'nnunet'\]"):
        ThyroidParams(seg_decoder="foo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="task_args.seg_decoder: 'foo' is not one of 'bilinear', 'nnunet'"):
        resolve_run(resolve_config(["task_args.seg_decoder=foo"], task="thyroid"))


def test_a_smoke_run_trains_the_nnunet_decoder_on_nnunet_plain(tmp_path: Path) -> None:
    from mtlbench.runner import prepare_run, run_experiment

    options = SMALL_BACKBONE_OPTIONS["nnunet_plain"]
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
        "task_args.seg_decoder=nnunet",
        *(f"backbone_args.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in options.items()),
    ]
    cfg = resolve_config(overrides, task="thyroid", method="vanilla", backbone="nnunet_plain", preset="smoke")
    prepared = prepare_run(cfg)
    transpconvs = prepared.model.heads["seg"].decoder.transpconvs
    before = [t.weight.detach().clone() for t in transpconvs]
    result = run_experiment(cfg, prepared=prepared).result
    assert result["steps"] > 0
    assert math.isfinite(result["metrics"]["val"]["dice"])
    assert all(not torch.equal(b, t.weight) for b, t in zip(before, transpconvs))
