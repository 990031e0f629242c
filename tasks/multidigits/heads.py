"""The multidigits task's heads: a classifier per digit and the ownership-map decoder."""

from __future__ import annotations

from torch import Tensor, nn

from mtlbench.backbones.contract import FeatureContract
from mtlbench.heads import UNetDecoder


class DigitClassifier(nn.Module):
    """Bottleneck → average pool to a ``grid`` × ``grid`` layout → MLP → 10 logits.

    The small grid (not one global average) keeps where the features are: the left digit sits in the
    upper-left of the canvas, the right one in the lower-right. No normalisation across the batch.
    """

    def __init__(
        self, contract: FeatureContract, grid: int = 2, hidden: int = 128, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(contract.bottleneck.channels * grid * grid, hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.mlp(self.pool(features[-1]))


class OwnershipHead(nn.Module):
    """Per-pixel logits (B, 3, H, W) for background / left / right at the input resolution."""

    def __init__(self, contract: FeatureContract, num_classes: int = 3) -> None:
        super().__init__()
        self.decoder = UNetDecoder(contract, out_channels=num_classes)
        self.finest_stride = contract.strides()[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        h, w = features[0].shape[-2:]
        return self.decoder(features, output_size=(h * self.finest_stride, w * self.finest_stride))
