"""The feature contract between a backbone and the task heads built on it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FeatureLevel:
    """One feature map a backbone returns: its channel count and stride w.r.t. the input."""

    channels: int
    stride: int


@dataclass(frozen=True)
class FeatureContract:
    """What a backbone promises: ``forward(x)`` returns one tensor per level, finest first.

    The last level is the bottleneck. Heads are built from this contract alone, so any
    backbone that honours it works with any task.
    """

    levels: tuple[FeatureLevel, ...]
    in_channels: int = 1

    def channels(self) -> list[int]:
        return [lv.channels for lv in self.levels]

    def strides(self) -> list[int]:
        return [lv.stride for lv in self.levels]

    @property
    def bottleneck(self) -> FeatureLevel:
        return self.levels[-1]

    def __len__(self) -> int:
        return len(self.levels)


class Backbone(nn.Module):
    """Base class: subclasses set ``self.contract`` and return ``list[Tensor]`` from ``forward``."""

    contract: FeatureContract

    def input_multiple(self) -> int:
        """Input height and width must be a multiple of this (the deepest stride)."""
        return max(self.contract.strides())
