"""The shared U-Net decoder: the bilinear default as it was, and nnU-Net v2's transposed-conv decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.contract import FeatureContract, FeatureLevel
from mtlbench.backbones.nnunet import nnunet_2d_settings, nnunet_plain
from mtlbench.backbones.unet import unet_small
from mtlbench.heads import UNetDecoder, stride_ratio
from mtlbench.tasks.thyroid.heads import SegmentationHead

#: The thyroid contract of the issue: nnunet_plain with 5 stages of 16–256 features, 64 px images.
NNUNET_5 = {"n_stages": 5, "features_per_stage": (16, 32, 64, 128, 256)}
SMALL = FeatureContract((FeatureLevel(4, 1), FeatureLevel(8, 2), FeatureLevel(16, 4)))


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def nnunet_decoder_params(features: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Parameters of nnU-Net v2's UNetDecoder: stage convs, transpconvs, the full-resolution seg layer
    (one output channel; the coarser deep-supervision seg layers are not counted)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    settings = {k: v for k, v in nnunet_2d_settings().items() if k != "return_skips"}
    network = PlainConvUNet(
        input_channels=1,
        n_stages=len(features),
        features_per_stage=features,
        kernel_sizes=3,
        strides=strides,
        n_conv_per_stage=2,
        num_classes=1,
        n_conv_per_stage_decoder=2,
        deep_supervision=False,
        **settings,
    )
    decoder = network.decoder
    return n_params(decoder.stages, decoder.transpconvs, decoder.seg_layers[-1])


@pytest.mark.parametrize(
    ("backbone", "size"),
    [(lambda: nnunet_plain(**NNUNET_5), (64, 64)), (unet_small, (64, 64)), (unet_small, (32, 48))],
    ids=["nnunet_plain-64px", "unet_small-64px", "unet_small-32x48px"],
)
def test_transposed_decoder_gives_logits_at_the_input_size(backbone, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    encoder = backbone()
    head = SegmentationHead(encoder.contract, decoder="nnunet")
    x = torch.randn(2, 1, *size)
    logits = head(encoder(x))
    assert logits.shape == (2, 1, *size)
    assert torch.isfinite(logits).all()
    decoder = head.decoder
    assert len(decoder.transpconvs) == len(decoder.stages) == len(encoder.contract) - 1
    assert all(type(t).__module__ == "mtlbench.conv" for t in decoder.transpconvs)


def test_transposed_decoder_has_nnunets_parameter_count() -> None:
    contract = nnunet_plain(**NNUNET_5).contract
    ours = UNetDecoder(contract, out_channels=1, upsampling="transposed")
    assert n_params(ours) == nnunet_decoder_params(NNUNET_5["features_per_stage"], (1, 2, 2, 2, 2))
    # widths follow the skips, uncapped: 16..256 here, and a 512-channel skip keeps 512
    assert [stage[0].in_channels for stage in ours.stages] == [256, 128, 64, 32]
    wide = FeatureContract((FeatureLevel(512, 1), FeatureLevel(512, 2)))
    assert UNetDecoder(wide, upsampling="transposed", max_width=256).stages[0][0].out_channels == 512


def test_transpconv_kernel_and_stride_are_the_ratio_of_the_levels_strides() -> None:
    contract = FeatureContract((FeatureLevel(4, 2), FeatureLevel(8, 8), FeatureLevel(16, 8)))
    decoder = UNetDecoder(contract, upsampling="transposed")
    # deepest first: level 2 over level 1 (8 / 8), then level 1 over level 0 (8 / 2)
    assert [(t.kernel_size, t.stride) for t in decoder.transpconvs] == [((1, 1), (1, 1)), ((4, 4), (4, 4))]
    assert [(t.in_channels, t.out_channels) for t in decoder.transpconvs] == [(16, 8), (8, 4)]
    feats = [torch.randn(1, 4, 16, 16), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4, 4)]
    assert decoder(feats).shape == (1, 1, 16, 16)


@pytest.mark.parametrize(
    ("strides", "fragment"),
    [((1, 2, 3), r"level 2 \(stride 3\) over level 1 \(stride 2\) is 1.5"), ((2, 1), "level 1 .* is 0.5")],
)
def test_a_non_integer_stride_ratio_is_refused(strides: tuple[int, ...], fragment: str) -> None:
    contract = FeatureContract(tuple(FeatureLevel(4 * 2**i, s) for i, s in enumerate(strides)))
    with pytest.raises(ValueError, match=fragment):
        UNetDecoder(contract, upsampling="transposed")
    UNetDecoder(contract)  # bilinear upsampling takes any stride pattern
    assert stride_ratio([1, 2, 8], 1) == 4


def test_sizes_the_transposed_conv_cannot_reach_are_refused() -> None:
    decoder = UNetDecoder(SMALL, upsampling="transposed")
    feats = [torch.randn(1, 4, 9, 9), torch.randn(1, 8, 5, 5), torch.randn(1, 16, 3, 3)]
    with pytest.raises(ValueError, match=r"gave \(6, 6\) where the skip is \(5, 5\)"):
        decoder(feats)


def test_an_unknown_upsampling_is_refused() -> None:
    with pytest.raises(ValueError, match="`upsampling = 'nearest'`"):
        UNetDecoder(SMALL, upsampling="nearest")  # type: ignore[arg-type]


def test_the_bilinear_default_keeps_its_state_dict_and_function() -> None:
    torch.manual_seed(0)
    decoder = UNetDecoder(SMALL)
    stage = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias"]
    expected = [f"stages.{s}.{name}" for s in (0, 1) for name in stage] + ["out.weight", "out.bias"]
    assert list(decoder.state_dict()) == expected
    assert not hasattr(decoder, "transpconvs")
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes["stages.0.0.weight"] == (8, 24, 3, 3)  # below + skip = 16 + 8
    assert shapes["stages.1.0.weight"] == (4, 12, 3, 3)
    assert shapes["out.weight"] == (1, 4, 1, 1)
    torch.manual_seed(0)
    explicit = UNetDecoder(SMALL, upsampling="bilinear")
    assert all(
        torch.equal(a, b) for a, b in zip(decoder.state_dict().values(), explicit.state_dict().values())
    )

    feats = [torch.randn(2, 4, 15, 15), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    x = feats[-1]
    for block, skip in zip(decoder.stages, reversed(feats[:-1])):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = block(torch.cat([x, skip], dim=1))
    reference = F.interpolate(decoder.out(x), size=(30, 30), mode="bilinear", align_corners=False)
    # the first conv of a stage sums the convolutions of its two parts (no concatenated copy):
    # the same function, up to float32 rounding
    torch.testing.assert_close(decoder(feats, output_size=(30, 30)), reference, rtol=1e-5, atol=1e-6)


def test_the_transposed_decoder_is_twice_differentiable() -> None:
    """RLAR and Rep-MTL differentiate the representation gradient again, through the transpconvs too."""
    torch.manual_seed(0)
    decoder = UNetDecoder(SMALL, upsampling="transposed")
    feats = [torch.randn(2, c, 16 // s, 16 // s, requires_grad=True) for c, s in ((4, 1), (8, 2), (16, 4))]
    (grad_z,) = torch.autograd.grad(decoder(feats).square().mean(), feats[-1], create_graph=True)
    grad_z.square().sum().backward()
    weight_grad = decoder.transpconvs[0].weight.grad
    assert weight_grad is not None and torch.isfinite(weight_grad).all() and weight_grad.abs().sum() > 0
