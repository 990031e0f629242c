"""A small U-Net encoder that trains in minutes on a CPU."""

from __future__ import annotations

from torch import Tensor, nn

from mtlbench.activation import LeakyReLU
from mtlbench.backbones.contract import Backbone, FeatureContract, FeatureLevel
from mtlbench.backbones.pretrained import apply_pretrained
from mtlbench.conv import Conv2d
from mtlbench.instance_norm import InstanceNorm2d
from mtlbench.registry import register_backbone


def _conv_norm_act(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # InstanceNorm, not BatchNorm: methods take per-sample gradients w.r.t. the representation,
    # which is only meaningful when no layer mixes the samples of a batch. The conv bias would be
    # removed by the normalisation's mean subtraction, so it is left out.
    return nn.Sequential(
        Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        InstanceNorm2d(out_channels, affine=True),
        LeakyReLU(0.01),
    )


class UNetEncoder(Backbone):
    """U-Net encoder: per stage ``convs_per_stage`` 3×3 conv–InstanceNorm–LeakyReLU layers.

    Stage 0 keeps the input resolution; every later stage halves it with a stride-2 first conv.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], convs_per_stage: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(
                f"Parameter `in_channels` should be at least 1. Found `in_channels = {in_channels}`."
            )
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise ValueError(
                f"Parameter `widths` should be non-empty positive integers. Found `widths = {widths}`."
            )
        if convs_per_stage < 1:
            raise ValueError(
                "Parameter `convs_per_stage` should be at least 1. "
                f"Found `convs_per_stage = {convs_per_stage}`."
            )
        stages = []
        previous = in_channels
        for index, width in enumerate(widths):
            layers = [_conv_norm_act(previous, width, stride=1 if index == 0 else 2)]
            layers += [_conv_norm_act(width, width, stride=1) for _ in range(convs_per_stage - 1)]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.contract = FeatureContract(
            levels=tuple(FeatureLevel(channels=w, stride=2**i) for i, w in enumerate(widths)),
            in_channels=in_channels,
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


@register_backbone("unet_small")
def unet_small(
    in_channels: int = 1,
    *,
    widths: tuple[int, ...] = (8, 16, 32, 64, 128),
    convs_per_stage: int = 2,
    pretrained: str | None = None,
) -> UNetEncoder:
    """Small U-Net encoder (InstanceNorm, LeakyReLU, strided convs); fast on a CPU.

    ``widths`` gives the channels of each stage (stage ``i`` has stride ``2**i``);
    ``pretrained`` is a local checkpoint of this backbone (see :func:`load_pretrained`).
    """
    model = UNetEncoder(in_channels, tuple(int(w) for w in widths), int(convs_per_stage))
    apply_pretrained(model, pretrained)
    return model
