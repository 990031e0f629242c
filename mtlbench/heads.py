"""Task heads that any task can build from a backbone's feature contract."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.activation import LeakyReLU
from mtlbench.backbones.contract import FeatureContract
from mtlbench.conv import Conv2d, ConvTranspose2d, convolve_concatenation
from mtlbench.instance_norm import InstanceNorm2d

Upsampling = Literal["bilinear", "transposed"]
UPSAMPLING: tuple[Upsampling, ...] = ("bilinear", "transposed")


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """3×3 conv → InstanceNorm → LeakyReLU, twice (per-sample normalisation: no batch mixing)."""
    return nn.Sequential(
        Conv2d(in_ch, out_ch, 3, padding=1),
        InstanceNorm2d(out_ch, affine=True),
        LeakyReLU(0.01),
        Conv2d(out_ch, out_ch, 3, padding=1),
        InstanceNorm2d(out_ch, affine=True),
        LeakyReLU(0.01),
    )


def stride_ratio(strides: list[int], level: int) -> int:
    """How much level ``level + 1`` is coarser than ``level``: the transposed conv's kernel and stride."""
    finer, deeper = strides[level], strides[level + 1]
    if deeper < finer or deeper % finer:
        raise ValueError(
            f"transposed upsampling needs each level's stride to be an integer multiple of the finer "
            f"level's: level {level + 1} (stride {deeper}) over level {level} (stride {finer}) is "
            f"{deeper / finer:g}"
        )
    return deeper // finer


class UNetDecoder(nn.Module):
    """U-Net decoder over the contract's skip features, ending in per-pixel logits.

    From the bottleneck up, each stage upsamples the deeper map, concatenates ``[up, skip]`` and
    applies two conv blocks. ``upsampling="bilinear"`` interpolates to the skip's exact size (any
    stride pattern works) and stage widths are ``min(skip, max_width)``. ``"transposed"`` is
    nnU-Net v2's decoder: a ``ConvTranspose2d`` (kernel = stride = the ratio of the two levels'
    strides) to the skip's channels (the ``transpconvs``), conv blocks from ``2 * skip`` to ``skip``
    channels (``max_width`` does not apply), and the input size must be divisible by the deepest
    stride. The logits are returned at the finest level's resolution, upsampled to ``output_size``
    if one is given.
    """

    def __init__(
        self,
        contract: FeatureContract,
        out_channels: int = 1,
        max_width: int = 256,
        upsampling: Upsampling = "bilinear",
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise ValueError(
                f"Parameter `upsampling` should be one of {list(UPSAMPLING)}. "
                f"Found `upsampling = {upsampling!r}`."
            )
        self.upsampling = upsampling
        chans, strides = contract.channels(), contract.strides()
        self.stages = nn.ModuleList()
        below = chans[-1]
        if upsampling == "bilinear":
            for skip_ch in reversed(chans[:-1]):
                width = min(skip_ch, max_width)
                self.stages.append(conv_block(below + skip_ch, width))
                below = width
        else:
            self.transpconvs = nn.ModuleList()
            for level in reversed(range(len(chans) - 1)):
                skip_ch, ratio = chans[level], stride_ratio(strides, level)
                self.transpconvs.append(ConvTranspose2d(below, skip_ch, kernel_size=ratio, stride=ratio))
                self.stages.append(conv_block(2 * skip_ch, skip_ch))
                below = skip_ch
        self.out = Conv2d(below, out_channels, 1)

    def upsample(self, x: Tensor, stage: int, skip: Tensor) -> Tensor:
        """The deeper map ``x`` brought to the size of ``skip`` for decoder stage ``stage``."""
        if self.upsampling == "bilinear":
            return F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        up = self.transpconvs[stage](x)
        if up.shape[-2:] != skip.shape[-2:]:
            raise ValueError(
                f"transposed upsampling (nnU-Net's decoder) gave {tuple(up.shape[-2:])} where the skip is "
                f"{tuple(skip.shape[-2:])}: the input's height and width must be divisible by the "
                f"backbone's deepest stride"
            )
        return up

    def forward(self, features: list[Tensor], output_size: tuple[int, int] | None = None) -> Tensor:
        x = features[-1]
        for s, (stage, skip) in enumerate(zip(self.stages, reversed(features[:-1]))):
            # = stage(cat([up, skip])), without the copy; a gradient to the bottleneck runs
            # through the upsampled path's part of the first convolution only (Conv2d docs)
            x = convolve_concatenation(stage[0], [self.upsample(x, s, skip), skip])
            for layer in stage[1:]:
                x = layer(x)
        logits = self.out(x)
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits
