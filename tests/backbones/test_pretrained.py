"""Loading local pretrained weights: round trips, partial matches and foreign checkpoint layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.backbones.contract import Backbone
from mtlbench.backbones.nnunet import nnunet_2d_settings
from mtlbench.backbones.pretrained import load_pretrained
from mtlbench.registry import create_backbone, list_backbones
from tests.tiny import SMALL_BACKBONE_OPTIONS as SMALL_OPTIONS

from .test_backbone_contract import build

UNET = {"widths": (8, 16, 32)}


def outputs(model: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_outputs(a: Backbone, b: Backbone) -> None:
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for fa, fb in zip(outputs(a, x), outputs(b, x), strict=True):
        assert torch.equal(fa, fb)


@pytest.mark.parametrize("name", list_backbones())
def test_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    source = build(name, seed=0)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)

    fresh = build(name, seed=1)
    report = load_pretrained(fresh, path, strict=True)
    assert report.complete and len(report.matched) == len(source.state_dict())
    assert_same_outputs(source, fresh)

    through_factory = create_backbone(name, **SMALL_OPTIONS.get(name, {}), pretrained=str(path))
    assert_same_outputs(source, through_factory)


def test_shape_mismatch_is_reported_and_the_rest_loaded(tmp_path: Path) -> None:
    source = build("unet_small", seed=0, **UNET)
    state = source.state_dict()
    changed = "stages.1.0.0.weight"
    state[changed] = torch.zeros(5, 5, 3, 3)
    path = tmp_path / "weights.pt"
    torch.save(state, path)

    fresh = build("unet_small", seed=1, **UNET)
    before = fresh.state_dict()[changed].clone()
    report = load_pretrained(fresh, path)
    assert [entry.split(":")[0] for entry in report.shape_mismatch] == [changed]
    assert "(5, 5, 3, 3)" in report.shape_mismatch[0]
    assert changed not in report.matched and len(report.matched) == len(state) - 1
    assert not report.missing and not report.unexpected
    assert torch.equal(fresh.state_dict()[changed], before)
    for key in report.matched:
        assert torch.equal(fresh.state_dict()[key], state[key]), key

    with pytest.raises(ValueError, match=changed):
        load_pretrained(build("unet_small", seed=1, **UNET), path, strict=True)


def test_strict_failure_copies_nothing(tmp_path: Path) -> None:
    source = build("unet_small", seed=0, **UNET)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("stages.2.")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    fresh = build("unet_small", seed=1, **UNET)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing stages\.2\."):
        load_pretrained(fresh, path, strict=True)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_nnunet_style_checkpoint_with_prefix(tmp_path: Path) -> None:
    source = build("unet_small", seed=0, **UNET)
    weights = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    weights["decoder.seg_layers.0.weight"] = torch.zeros(2, 8, 1, 1)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer", "current_epoch": 3}, path)

    fresh = build("unet_small", seed=1, **UNET)
    report = load_pretrained(fresh, path, prefix="encoder.")
    assert report.complete
    assert report.skipped == ["decoder.seg_layers.0.weight"]
    assert_same_outputs(source, fresh)


def test_real_nnunet_network_weights_load_into_the_encoder(tmp_path: Path) -> None:
    """An nnU-Net v2 checkpoint (numpy floats in its log) loads into ``nnunet_plain`` as it is."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    options = {"n_stages": 4, "features_per_stage": (8, 16, 32, 64)}
    settings = {k: v for k, v in nnunet_2d_settings().items() if k != "return_skips"}
    torch.manual_seed(0)
    network = PlainConvUNet(
        input_channels=1,
        kernel_sizes=3,
        strides=(1, 2, 2, 2),
        n_conv_per_stage=2,
        num_classes=2,
        n_conv_per_stage_decoder=2,
        **options,
        **settings,
    )
    path = tmp_path / "checkpoint_final.pth"
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "logging": {"train_losses": [np.float64(0.7), np.float32(0.5)], "ema_fg_dice": [np.float64(0.1)]},
        "_best_ema": np.float64(0.1),
        "current_epoch": 2,
        "init_args": {"configuration": "2d", "fold": 0},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
    }
    torch.save(checkpoint, path)

    torch.manual_seed(1)
    backbone = create_backbone("nnunet_plain", **options, pretrained=str(path))
    report = load_pretrained(backbone, path)
    assert not report.missing and not report.shape_mismatch
    assert report.unexpected and all(k.startswith("decoder.") for k in report.unexpected)
    x = torch.randn(1, 1, 32, 32)
    network.eval()
    with torch.no_grad():
        expected = network.encoder(x)
    for a, b in zip(expected, outputs(backbone, x), strict=True):
        assert torch.equal(a, b)


def test_timm_native_checkpoint_loads_without_the_classifier(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    classifier = timm.create_model("resnet10t", in_chans=1, num_classes=3, pretrained=False)
    path = tmp_path / "resnet10t.pth"
    torch.save(classifier.state_dict(), path)
    backbone = create_backbone("timm", model_name="resnet10t", pretrained=str(path))
    report = load_pretrained(backbone.model, path)
    assert not report.missing and not report.shape_mismatch
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    loaded = backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in classifier.state_dict().items() if k in loaded)


@pytest.mark.parametrize("nesting", ["state_dict", "model", "module.", "_orig_mod."])
def test_common_wrappings_are_unwrapped(nesting: str, tmp_path: Path) -> None:
    source = build("unet_small", seed=0, **UNET)
    state = source.state_dict()
    if nesting.endswith("."):
        payload: dict = {f"{nesting}{k}": v for k, v in state.items()}
    else:
        payload = {nesting: state, "epoch": 7}
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    fresh = build("unet_small", seed=1, **UNET)
    assert load_pretrained(fresh, path).complete
    assert_same_outputs(source, fresh)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(build("unet_small", **UNET), path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_backbone("unet_small", **UNET, pretrained=str(path))


def test_file_without_tensors_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "not_weights.pt"
    torch.save({"epoch": 3, "note": "no tensors here"}, path)
    with pytest.raises(ValueError, match="no state dict"):
        load_pretrained(build("unet_small", **UNET), path)


def test_checkpoint_that_pickles_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": build("unet_small", **UNET).state_dict(), "hook": print}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_pretrained(build("unet_small", **UNET), path)


def test_factory_rejects_a_checkpoint_that_matches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor"):
        create_backbone("unet_small", **UNET, pretrained=str(path))


def test_factory_warns_on_a_partial_match(tmp_path: Path) -> None:
    source = build("unet_small", seed=0, **UNET)
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in source.state_dict().items() if k.startswith("stages.0.")}, path)
    with pytest.warns(UserWarning, match="partly loaded"):
        create_backbone("unet_small", **UNET, pretrained=str(path))
