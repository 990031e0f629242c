"""Model composition: backbone → feature contract → named shared representations → task heads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
    """The backbone's features, the heads' outputs, and (from the trainer) the heads' inputs.

    ``head_inputs`` are the tensors the heads consumed when the trainer ran them: a fresh view (or a
    float32 copy) of each feature map, so a gradient taken with respect to them stops at the heads
    and one taken from them continues into the backbone. ``features`` are what the representations
    are read from: the backbone's own tensors, so ``∇_z L`` of an encoder level is the total
    derivative (through the heads *and* the deeper encoder stages), except the deepest, which the
    encoder does not consume, where it is the head input itself.
    """

    features: list[Tensor]
    outputs: dict[str, Any]
    head_inputs: list[Tensor] = field(default_factory=list)

    @property
    def representations(self) -> dict[str, Tensor | list[Tensor]]:
        return named_representations(self.features)


def cut_point(feature: Tensor, float32: bool = False) -> Tensor:
    """What a head consumes of ``feature``: a new view (a float32 copy under float32 heads), so that
    gradients taken with respect to it stop at the heads (``StepInputs.head_inputs``)."""
    x = feature.float() if float32 else feature
    return x.view_as(x)


def _graph_reaches(starts: Iterable[Any], stop: Callable[[Any], bool], found: Callable[[Any], bool]) -> bool:
    """Whether a walk of the autograd graph from ``starts`` (grad_fn nodes), not entering nodes for
    which ``stop`` holds, meets a node for which ``found`` holds."""
    seen: set[int] = set()
    stack = [node for node in starts if node is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if found(node):
            return True
        if stop(node):
            continue
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False


def feeds_other_levels(features: list[Tensor]) -> bool:
    """Whether another feature map of the backbone is computed from the deepest one (a SegNet's
    decoder levels are; an encoder's levels are not)."""
    target = features[-1].grad_fn
    if target is None or len(features) < 2:
        return False
    return _graph_reaches((f.grad_fn for f in features[:-1]), lambda node: False, lambda node: node is target)


def heads_read_only_their_inputs(
    losses: Iterable[Tensor], head_inputs: Sequence[Tensor], shared: Sequence[nn.Parameter]
) -> bool:
    """Whether the losses reach the backbone's parameters only through ``head_inputs`` (no head reads
    a backbone tensor by another way, as MTAN's attention reads SegNet's inner maps): the condition
    for taking per-task gradients through the heads' inputs."""
    cut = {id(x.grad_fn) for x in head_inputs if x.grad_fn is not None}
    params = {id(p) for p in shared}

    def is_shared_leaf(node: Any) -> bool:
        variable = getattr(node, "variable", None)
        return variable is not None and id(variable) in params

    return not _graph_reaches((loss.grad_fn for loss in losses), lambda node: id(node) in cut, is_shared_leaf)


class MultiTaskModel(nn.Module):
    """A shared backbone with task heads; heads receive the full list of feature maps."""

    def __init__(self, backbone: Backbone, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self._deepest_feeds_other_levels: bool | None = None

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

    def heads_on_cut_points(self, features: list[Tensor], float32: bool = False) -> ModelOutput:
        """The heads on cut points of ``features`` (:func:`cut_point`), as the trainer runs them:
        ``head_inputs`` set, representations read from the backbone's own tensors — except the
        deepest level when nothing else in the backbone is computed from it (then its cut point, a
        float32 tensor under float32 heads, has the same, total, gradient)."""
        head_inputs = [cut_point(f, float32) for f in features]
        heads = self.forward_heads(head_inputs)
        deepest = features[-1] if self.deepest_feeds_other_levels(features) else head_inputs[-1]
        return ModelOutput([*features[:-1], deepest], heads.outputs, head_inputs)

    def deepest_feeds_other_levels(self, features: list[Tensor]) -> bool:
        """:func:`feeds_other_levels`, decided on the first recorded graph and kept (the
        architecture does not change). Ask it first with the backbone's own features: slices of
        them no longer show which level is computed from which."""
        feeds = self._deepest_feeds_other_levels
        if feeds is None:
            feeds = feeds_other_levels(features)
            if features[-1].grad_fn is not None:  # a recorded graph
                self._deepest_feeds_other_levels = feeds
        return feeds

    def forward_heads(self, features: list[Tensor]) -> ModelOutput:
        """The heads on the backbone's feature maps (the trainer may run them in another precision)."""
        features = list(features)
        outputs: dict[str, Any] = {}
        for name, head in self.heads.items():
            outputs[name] = head(features)
        return ModelOutput(features=features, outputs=outputs)
