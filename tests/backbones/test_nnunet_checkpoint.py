"""Initialising a multitask model from a real nnU-Net v2 network's checkpoint (encoder and decoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mtlbench.backbones.nnunet import nnunet_2d_settings, nnunet_plain
from mtlbench.backbones.nnunet_checkpoint import (
    CONFLICT,
    NO_COUNTERPART,
    SHAPE_MISMATCH,
    NnUNetLoadReport,
    load_nnunet_checkpoint,
)
from mtlbench.model import MultiTaskModel
from mtlbench.tasks.thyroid.settings import ThyroidData
from mtlbench.tasks.thyroid.task import ThyroidParams, ThyroidTask
from tests.tiny import SMALL_BACKBONE_OPTIONS

OPTIONS = SMALL_BACKBONE_OPTIONS["nnunet_plain"]  # n_stages=4, features (8, 16, 32, 64)


def nnunet_network(seed: int = 0, num_classes: int = 2) -> nn.Module:
    """A dynamic_network_architectures PlainConvUNet as nnU-Net v2 builds it for 2D."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    settings = {k: v for k, v in nnunet_2d_settings().items() if k != "return_skips"}
    torch.manual_seed(seed)
    network = PlainConvUNet(
        input_channels=1,
        kernel_sizes=3,
        strides=(1, 2, 2, 2),
        n_conv_per_stage=2,
        num_classes=num_classes,
        n_conv_per_stage_decoder=2,
        deep_supervision=False,
        **OPTIONS,
        **settings,
    )
    # nnU-Net initialises norms to (1, 0); random affine values make a wrong copy visible.
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.InstanceNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return network.eval()


def save_checkpoint(network: nn.Module, path: Path, **extra: Any) -> Path:
    """What nnU-Net v2's ``save_checkpoint`` writes, numpy floats of the training log included."""
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "grad_scaler_state": None,
        "logging": {"train_losses": [np.float64(0.7), np.float32(0.5)], "ema_fg_dice": [np.float64(0.1)]},
        "_best_ema": np.float64(0.1),
        "current_epoch": 2,
        "init_args": {"configuration": "2d", "fold": 0, "dataset_json": {"labels": {"background": 0}}},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
        **extra,
    }
    torch.save(checkpoint, path)
    return path


def thyroid_model(seed: int = 1, seg_decoder: str = "bilinear", **backbone_options: Any) -> MultiTaskModel:
    torch.manual_seed(seed)
    backbone = nnunet_plain(**(backbone_options or OPTIONS))
    params = ThyroidParams(embedding_dim=24, classifier_hidden=16, seg_decoder=seg_decoder)  # type: ignore[arg-type]
    task = ThyroidTask(params, ThyroidData(), 0, cache_dir=".")
    return MultiTaskModel(backbone, task.build_heads(backbone.contract)).eval()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, MultiTaskModel, NnUNetLoadReport]:
    network = nnunet_network()
    path = save_checkpoint(network, tmp_path_factory.mktemp("nnunet") / "checkpoint_final.pth")
    model = thyroid_model()
    return network, model, load_nnunet_checkpoint(model, path, "seg")


def test_every_encoder_tensor_loads_and_encoder_outputs_are_identical(loaded) -> None:  # type: ignore[no-untyped-def]
    network, model, report = loaded
    backbone_names = {f"backbone.{k}" for k in model.backbone.state_dict()}
    assert backbone_names <= {m.model for m in report.encoder}
    assert not any(name.startswith("backbone.") for name in report.initialised)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, ours = network.encoder(x), model.backbone(x)
    for a, b in zip(expected, ours, strict=True):
        assert torch.equal(a, b)


def test_every_checkpoint_tensor_has_exactly_one_outcome(loaded) -> None:  # type: ignore[no-untyped-def]
    network, _, report = loaded
    names = [m.checkpoint for m in report.encoder + report.decoder] + [u.checkpoint for u in report.unmatched]
    assert sorted(names) == sorted(network.state_dict())
    assert report.accounted == report.total == len(network.state_dict())
    # the decoder's reference to its encoder is the same tensor again
    assert {m.checkpoint for m in report.encoder} == {
        k for k in network.state_dict() if k.startswith(("encoder.", "decoder.encoder."))
    }
    assert not any(u.kind == CONFLICT for u in report.unmatched)


def test_decoder_matches_follow_the_documented_rule(loaded) -> None:  # type: ignore[no-untyped-def]
    network, model, report = loaded
    pairs = {m.checkpoint: m.model for m in report.decoder}
    seg = "heads.seg.decoder"
    for s in range(3):
        nn_stage, ours = f"decoder.stages.{s}.convs", f"{seg}.stages.{s}"
        assert pairs[f"{nn_stage}.0.norm.weight"] == f"{ours}.1.weight"
        assert pairs[f"{nn_stage}.1.conv.weight"] == f"{ours}.3.weight"
        assert pairs[f"{nn_stage}.1.all_modules.0.bias"] == f"{ours}.3.bias"
        assert pairs[f"{nn_stage}.1.all_modules.1.weight"] == f"{ours}.4.weight"
        # the first conv reads below + skip channels here, 2 * skip in nnU-Net: weight and bias both stay
        for param in ("weight", "bias"):
            assert f"{nn_stage}.0.conv.{param}" not in pairs
            assert f"{ours}.0.{param}" in report.initialised
    unmatched = {u.checkpoint: u for u in report.unmatched}
    assert unmatched["decoder.stages.0.convs.0.conv.bias"].kind == SHAPE_MISMATCH
    assert "(32, 64, 3, 3)" in unmatched["decoder.stages.0.convs.0.conv.weight"].detail
    assert unmatched["decoder.transpconvs.0.weight"].kind == NO_COUNTERPART
    assert unmatched["decoder.seg_layers.0.weight"].kind == NO_COUNTERPART
    # 3 stages x (norm 0, conv 1, norm 1) x (weight, bias) x 2 names, plus the converted output layer
    assert len(report.decoder) == 3 * 3 * 2 * 2 + 2
    loaded_decoder = {m.model for m in report.decoder}
    assert len(loaded_decoder) == 3 * 3 * 2 + 2

    state, source = model.state_dict(), network.state_dict()
    for m in report.decoder:
        if "seg_layers" not in m.checkpoint:
            assert torch.equal(state[m.model], source[m.checkpoint]), m.checkpoint
    assert all(name.startswith("heads.cls.") or name.startswith(f"{seg}.") for name in report.initialised)
    text = report.format_report()
    assert "decoder.stages.2.convs.1.conv.weight -> heads.seg.decoder.stages.2.3.weight" in text
    assert "decoder.transpconvs.2.weight: no counterpart" in text
    assert "heads.cls:" in text


def test_two_class_output_becomes_the_same_foreground_probability(loaded) -> None:  # type: ignore[no-untyped-def]
    network, model, _ = loaded
    skip = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        softmax_fg = network.decoder.seg_layers[-1](skip).softmax(1)[:, 1:2]
        sigmoid_fg = model.heads["seg"].decoder.out(skip).sigmoid()
    assert torch.allclose(softmax_fg, sigmoid_fg, atol=1e-6)


@pytest.fixture(scope="module")
def loaded_into_nnunet_decoder(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[nn.Module, MultiTaskModel, NnUNetLoadReport]:
    network = nnunet_network()
    path = save_checkpoint(network, tmp_path_factory.mktemp("nnunet") / "checkpoint_final.pth")
    model = thyroid_model(seg_decoder="nnunet")
    return network, model, load_nnunet_checkpoint(model, path, "seg")


def test_the_nnunet_decoder_loads_everything_but_the_deep_supervision_outputs(
    loaded_into_nnunet_decoder,
) -> None:  # type: ignore[no-untyped-def]
    network, model, report = loaded_into_nnunet_decoder
    coarse = {f"decoder.seg_layers.{i}.{param}" for i in (0, 1) for param in ("weight", "bias")}
    assert {u.checkpoint: u.kind for u in report.unmatched} == dict.fromkeys(coarse, NO_COUNTERPART)
    assert report.accounted == report.total == len(network.state_dict())
    assert all(name.startswith("heads.cls.") for name in report.initialised)
    pairs = {m.checkpoint: m.model for m in report.decoder}
    seg = "heads.seg.decoder"
    for s in range(3):
        assert pairs[f"decoder.transpconvs.{s}.weight"] == f"{seg}.transpconvs.{s}.weight"
        assert pairs[f"decoder.transpconvs.{s}.bias"] == f"{seg}.transpconvs.{s}.bias"
        assert pairs[f"decoder.stages.{s}.convs.0.conv.weight"] == f"{seg}.stages.{s}.0.weight"
    state, source = model.state_dict(), network.state_dict()
    for m in report.decoder:
        if "seg_layers" not in m.checkpoint:
            assert torch.equal(state[m.model], source[m.checkpoint]), m.checkpoint


def test_the_nnunet_decoder_gives_nnunets_foreground_minus_background_logit(
    loaded_into_nnunet_decoder,
) -> None:  # type: ignore[no-untyped-def]
    network, model, _ = loaded_into_nnunet_decoder
    assert not network.decoder.deep_supervision and not network.training and not model.training
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = network(x)  # (B, 2, H, W): background, foreground
        ours = model.heads["seg"](model.backbone(x))
    assert expected.shape == (2, 2, 32, 32) and ours.shape == (2, 1, 32, 32)
    torch.testing.assert_close(ours, expected[:, 1:2] - expected[:, 0:1], atol=1e-5, rtol=0)


def test_our_encoder_and_decoder_normalise_and_activate_as_nnunet(loaded_into_nnunet_decoder) -> None:  # type: ignore[no-untyped-def]
    network, model, _ = loaded_into_nnunet_decoder

    def norms(module: nn.Module) -> list[tuple[int, float, bool, bool]]:
        return [
            (m.num_features, m.eps, m.affine, m.track_running_stats)
            for m in module.modules()
            if isinstance(m, nn.InstanceNorm2d)
        ]

    def slopes(module: nn.Module) -> list[float]:
        return [m.negative_slope for m in module.modules() if isinstance(m, nn.LeakyReLU)]

    ours_encoder, nn_encoder = norms(model.backbone), norms(network.encoder)
    assert ours_encoder == nn_encoder and {n[1:] for n in nn_encoder} == {(1e-5, True, False)}
    assert norms(model.heads["seg"]) == norms(network.decoder.stages)
    assert slopes(model.heads["seg"]) == slopes(network.decoder.stages)
    assert set(slopes(model.backbone)) == {0.01}


def test_fewer_stages_pair_the_transpconvs_by_the_skip_they_feed(tmp_path: Path) -> None:
    path = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    model = thyroid_model(seg_decoder="nnunet", n_stages=3, features_per_stage=(8, 16, 32))
    report = load_nnunet_checkpoint(model, path, "seg")
    unmatched = {u.checkpoint: u for u in report.unmatched}
    assert unmatched["decoder.transpconvs.0.weight"].kind == NO_COUNTERPART
    pairs = {m.checkpoint: m.model for m in report.decoder}
    assert pairs["decoder.transpconvs.2.weight"] == "heads.seg.decoder.transpconvs.1.weight"
    assert pairs["decoder.transpconvs.1.bias"] == "heads.seg.decoder.transpconvs.0.bias"
    assert report.accounted == report.total


def test_region_based_outputs_are_not_converted(tmp_path: Path) -> None:
    network = nnunet_network()
    path = save_checkpoint(
        network,
        tmp_path / "checkpoint_final.pth",
        init_args={"dataset_json": {"labels": {"background": 0, "a": [1, 2]}, "regions_class_order": [1, 2]}},
    )
    report = load_nnunet_checkpoint(thyroid_model(), path, "seg")
    unmatched = {u.checkpoint: u.kind for u in report.unmatched}
    assert unmatched["decoder.seg_layers.2.weight"] == SHAPE_MISMATCH
    assert unmatched["decoder.seg_layers.2.bias"] == SHAPE_MISMATCH


def test_the_checkpoint_is_read_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    calls: list[dict[str, Any]] = []
    original = torch.load

    def checked_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        assert kwargs.get("weights_only") is True
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", checked_load)
    load_nnunet_checkpoint(thyroid_model(), path, "seg")
    assert len(calls) == 1


def test_checkpoint_that_pickles_code_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth", hook=print)
    with pytest.raises(ValueError, match="weights_only"):
        load_nnunet_checkpoint(thyroid_model(), path, "seg")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_nnunet_checkpoint(thyroid_model(), tmp_path / "nowhere" / "checkpoint_final.pth", "seg")


def test_a_file_without_network_weights_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "plain_state.pt"
    torch.save({"state_dict": nnunet_network().state_dict(), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"plain_state\.pt.*network_weights"):
        load_nnunet_checkpoint(thyroid_model(), path, "seg")


def test_a_backbone_without_the_nnunet_encoder_is_rejected(tmp_path: Path) -> None:
    from mtlbench.registry import create_backbone

    path = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    backbone = create_backbone("unet_small", **SMALL_BACKBONE_OPTIONS["unet_small"])
    task = ThyroidTask(ThyroidParams(embedding_dim=24, classifier_hidden=16), ThyroidData(), 0, cache_dir=".")
    model = MultiTaskModel(backbone, task.build_heads(backbone.contract))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no encoder tensor"):
        load_nnunet_checkpoint(model, path, "seg")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_other_stage_counts_are_reported_not_forced(tmp_path: Path) -> None:
    """A 4-stage checkpoint into a 3-stage model: the deepest encoder and decoder stages stay out."""
    path = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    torch.manual_seed(0)
    backbone = nnunet_plain(n_stages=3, features_per_stage=(8, 16, 32))
    task = ThyroidTask(ThyroidParams(embedding_dim=24, classifier_hidden=16), ThyroidData(), 0, cache_dir=".")
    model = MultiTaskModel(backbone, task.build_heads(backbone.contract))
    report = load_nnunet_checkpoint(model, path, "seg")
    unmatched = {u.checkpoint: u for u in report.unmatched}
    assert unmatched["encoder.stages.3.0.convs.0.conv.weight"].kind == NO_COUNTERPART
    # stages pair by the skip they merge: nnU-Net's deepest decoder stage has no partner here
    assert unmatched["decoder.stages.0.convs.1.conv.weight"].kind == NO_COUNTERPART
    pairs = {m.checkpoint: m.model for m in report.decoder}
    assert pairs["decoder.stages.2.convs.1.conv.weight"] == "heads.seg.decoder.stages.1.3.weight"
    assert pairs["decoder.stages.1.convs.1.conv.weight"] == "heads.seg.decoder.stages.0.3.weight"
    assert report.accounted == report.total
    assert not any(n.startswith("backbone.") for n in report.initialised)


def test_a_model_without_segmentation_head_reports_the_decoder_as_unmatched(tmp_path: Path) -> None:
    path = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    torch.manual_seed(0)
    backbone = nnunet_plain(**OPTIONS)
    params = ThyroidParams(tasks=("cls",), embedding_dim=24, classifier_hidden=16)
    model = MultiTaskModel(
        backbone, ThyroidTask(params, ThyroidData(), 0, cache_dir=".").build_heads(backbone.contract)
    )
    report = load_nnunet_checkpoint(model, path, "seg")
    assert not report.decoder and report.accounted == report.total
    decoder_keys = {
        k for k in nnunet_network().state_dict() if k.startswith("decoder.") and ".encoder." not in k
    }
    assert {u.checkpoint for u in report.unmatched} == decoder_keys
    assert all("no head 'seg'" in u.detail for u in report.unmatched)


def test_nnunet_checkpoint_initialises_the_run_and_is_reported(tmp_path) -> None:
    from mtlbench.config import ConfigError, resolve_config
    from mtlbench.runner import prepare_run, run_experiment
    from tests.tiny import tiny_run_overrides as thyroid_run_overrides

    checkpoint = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    overrides = thyroid_run_overrides(tmp_path, **{"train.epochs": 1, "data.num_external": 0})
    overrides = [o for o in overrides if not o.startswith("backbone_args.")]
    overrides += [
        "backbone_args.n_stages=4",
        "backbone_args.features_per_stage=[8, 16, 32, 64]",
        f"nnunet_checkpoint={checkpoint}",
    ]
    cfg = resolve_config(overrides, method="vanilla", backbone="nnunet_plain")
    prepared = prepare_run(cfg)
    expected = nnunet_network().state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    assert torch.equal(prepared.model.backbone.encoder.stages[0][0].convs[0].conv.weight, expected)
    outcome = run_experiment(cfg, prepared=prepared)
    assert (outcome.folder.root / "pretrained_report.txt").is_file()
    assert outcome.result["pretrained"]["encoder"]
    missing = resolve_config([*overrides[:-1], "nnunet_checkpoint=/nope.pth"], backbone="nnunet_plain")
    with pytest.raises(ConfigError, match="nnunet_checkpoint '/nope.pth' does not exist"):
        prepare_run(missing)
