"""Model composition: backbone → feature contract → named shared representations → task heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mtlbench.backbones.contract import Backbone, FeatureContract

REPRESENTATION_NAMES = ("bottleneck", "last", "mid", "mean_last3")


def named_representations(features: list[Tensor]) -> dict[str, Tensor | list[Tensor]]:
    """The shared representations a method may probe, all views of the backbone's features.

    ``bottleneck`` is the deepest feature map; ``last`` the encoder stage before it; ``mid`` the
    middle stage; ``mean_last3`` the last three levels (bottleneck included) as a list.
    """
    n = len(features)
    return {
        "bottleneck": features[-1],
        "last": features[-2] if n >= 2 else features[-1],
        "mid": features[n // 2],
        "mean_last3": features[-3:],
    }


@dataclass
class ModelOutput:
    features: list[Tensor]
    outputs: dict[str, Any]

    @property
    def representations(self) -> dict[str, Tensor | list[Tensor]]:
        return named_representations(self.features)


class MultiTaskModel(nn.Module):
    """A shared backbone with task heads; heads receive the full list of feature maps."""

    def __init__(self, backbone: Backbone, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    @property
    def contract(self) -> FeatureContract:
        return self.backbone.contract

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder`` and ``head/<name>`` parameter lists, for per-module diagnostics."""
        groups = {"encoder": self.shared_parameters()}
        for name, head in self.heads.items():
            groups[f"head/{name}"] = [p for p in head.parameters() if p.requires_grad]
        return groups

    def forward(self, x: Tensor) -> ModelOutput:
        return self.forward_heads(self.backbone(x))

    def forward_heads(self, features: list[Tensor]) -> ModelOutput:
        """The heads on the backbone's feature maps (the trainer may run them in another precision)."""
        features = list(features)
        outputs: dict[str, Any] = {}
        for name, head in self.heads.items():
            outputs[name] = head(features)
        return ModelOutput(features=features, outputs=outputs)
