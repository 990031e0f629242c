"""Task heads for dense prediction, built from the backbone's feature contract alone.

``unet``: the core's U-Net decoder over every level (InstanceNorm, no batch mixing), for any backbone.
``segnet``: MTAN's prediction layer (3×3 conv, 1×1 conv) on the finest level, for the ``segnet`` backbone.
``mtan``: MTAN's task attention over the ``segnet`` backbone's blocks, then that prediction layer
(:mod:`.mtan`).
``aspp``: LibMTL's DeepLab head (``examples/nyu/aspp.py``), one per task on the deepest level: ASPP
with a 1×1 branch, three 3×3 branches dilated 12, 24, 36 and an image-pooling branch, each of
``width`` channels, projected by 1×1 (+ dropout 0.5), then 3×3 conv, norm, ReLU and a 1×1 classifier.
LibMTL uses BatchNorm (``norm="batch"``); ``norm="group"`` keeps the samples of a batch independent.
Every head predicts at the input resolution (bilinear, align_corners=True as LibMTL's
``process_preds``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.backbones.contract import FeatureContract
from mtlbench.heads import UNetDecoder


def input_size(features: list[Tensor], contract: FeatureContract) -> tuple[int, int]:
    stride = contract.levels[0].stride
    return (features[0].shape[-2] * stride, features[0].shape[-1] * stride)


class UNetHead(nn.Module):
    def __init__(self, contract: FeatureContract, out_channels: int, max_width: int = 256) -> None:
        super().__init__()
        self.contract = contract
        self.decoder = UNetDecoder(contract, out_channels, max_width=max_width)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features, output_size=input_size(features, self.contract))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(max(1, min(32, channels // 8)), channels)


def _conv_norm_relu(in_ch: int, out_ch: int, kernel: int, dilation: int, norm: str) -> nn.Sequential:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        _norm(norm, out_ch),
        nn.ReLU(),
    )


class ASPPHead(nn.Module):
    def __init__(
        self,
        contract: FeatureContract,
        out_channels: int,
        width: int = 256,
        rates: tuple[int, ...] = (12, 24, 36),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"Parameter `norm` should be 'batch' or 'group'. Found `norm = {norm!r}`.")
        self.contract = contract
        in_ch = contract.bottleneck.channels
        self.branches = nn.ModuleList(
            [_conv_norm_relu(in_ch, width, 1, 1, norm)]
            + [_conv_norm_relu(in_ch, width, 3, r, norm) for r in rates]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_norm_relu(in_ch, width, 1, 1, norm))
        self.project = nn.Sequential(
            _conv_norm_relu(width * (len(rates) + 2), width, 1, 1, norm), nn.Dropout(0.5)
        )
        self.classifier = nn.Sequential(
            _conv_norm_relu(width, width, 3, 1, norm), nn.Conv2d(width, out_channels, 1)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))
        logits = self.classifier(x)
        return F.interpolate(
            logits, size=input_size(features, self.contract), mode="bilinear", align_corners=True
        )


class SegNetHead(nn.Module):
    """MTAN's prediction layer (``pred_task*``): 3×3 conv then 1×1 conv on the finest level, no norm."""

    def __init__(self, contract: FeatureContract, out_channels: int) -> None:
        super().__init__()
        self.contract = contract
        channels = contract.levels[0].channels
        self.layers = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, out_channels, 1)
        )
        for m in self.layers:
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.predict(features[0], input_size(features, self.contract))

    def predict(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """The prediction layer on ``x`` (the finest level's channels), at ``size``."""
        logits = self.layers(x)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        return logits
