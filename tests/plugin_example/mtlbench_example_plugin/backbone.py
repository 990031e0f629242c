"""A two-level convolutional encoder honouring the feature contract."""

from __future__ import annotations

from torch import Tensor, nn

from mtlbench.api import Backbone, FeatureContract, FeatureLevel, apply_pretrained


def _block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # GroupNorm over one sample: no layer mixes the samples of a batch
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(1, out_channels),
        nn.LeakyReLU(0.01),
    )


class TinyCNN(Backbone):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.first = _block(in_channels, width, stride=1)
        self.second = _block(width, 2 * width, stride=2)
        self.contract = FeatureContract(
            levels=(FeatureLevel(width, 1), FeatureLevel(2 * width, 2)), in_channels=in_channels
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        first = self.first(x)
        return [first, self.second(first)]


def tiny_cnn(in_channels: int = 1, *, width: int = 8, pretrained: str | None = None) -> TinyCNN:
    """Two-level CNN (GroupNorm, LeakyReLU): full and half resolution (a plugin example).

    ``pretrained`` is a local checkpoint of this backbone, as for every backbone.
    """
    if width < 1:
        raise ValueError(f"Parameter `width` should be at least 1. Found `width = {width}`.")
    model = TinyCNN(in_channels, int(width))
    apply_pretrained(model, pretrained)
    return model
