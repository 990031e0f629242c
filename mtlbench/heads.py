"""Task heads that any task can build from a backbone's feature contract."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.backbones.contract import FeatureContract
from mtlbench.conv import Conv2d
from mtlbench.instance_norm import InstanceNorm2d


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """3×3 conv → InstanceNorm → LeakyReLU, twice (per-sample normalisation: no batch mixing)."""
    return nn.Sequential(
        Conv2d(in_ch, out_ch, 3, padding=1),
        InstanceNorm2d(out_ch, affine=True),
        nn.LeakyReLU(0.01),
        Conv2d(out_ch, out_ch, 3, padding=1),
        InstanceNorm2d(out_ch, affine=True),
        nn.LeakyReLU(0.01),
    )


class UNetDecoder(nn.Module):
    """U-Net decoder over the contract's skip features, ending in per-pixel logits.

    From the bottleneck up, each stage upsamples (bilinear, to the skip's exact size, so any
    stride pattern works), concatenates the skip and applies two conv blocks. The logits are
    returned at the finest level's resolution, upsampled to ``output_size`` if one is given.
    """

    def __init__(self, contract: FeatureContract, out_channels: int = 1, max_width: int = 256) -> None:
        super().__init__()
        chans = contract.channels()
        self.stages = nn.ModuleList()
        below = chans[-1]
        for skip_ch in reversed(chans[:-1]):
            width = min(skip_ch, max_width)
            self.stages.append(conv_block(below + skip_ch, width))
            below = width
        self.out = Conv2d(below, out_channels, 1)

    def forward(self, features: list[Tensor], output_size: tuple[int, int] | None = None) -> Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        logits = self.out(x)
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits
