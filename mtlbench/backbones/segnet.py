"""SegNet as the multitask papers use it: MTAN's shared encoder-decoder (``model_segnet_split.py``,
and the shared network of ``model_segnet_mtan.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from mtlbench.backbones.contract import Backbone, FeatureContract, FeatureLevel
from mtlbench.backbones.pretrained import apply_pretrained
from mtlbench.registry import register_backbone


def _conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """3×3 conv → BatchNorm → ReLU (MTAN's ``conv_layer``)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU())


def _stack(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(_conv(channels, channels) for _ in range(n)))


@dataclass(frozen=True)
class SegNetInner:
    """The inner maps of every SegNet block, each list finest first (index = stage): ``encoder_first``
    (after a stage's first conv), ``encoder_out`` (the stage's output, before pooling) and
    ``decoder_in`` (a decoder stage's unpooled input). The blocks' outputs are the levels."""

    encoder_first: list[Tensor]
    encoder_out: list[Tensor]
    decoder_in: list[Tensor]


@dataclass(frozen=True)
class SegNetContract(FeatureContract):
    """The SegNet's levels and stage widths, and ``inner_maps()``: the :class:`SegNetInner` of the
    backbone's latest forward pass, which MTAN's attention heads read besides the levels."""

    widths: tuple[int, ...] = ()
    inner_maps: Callable[[], SegNetInner] | None = field(default=None, compare=False, repr=False)


class SegNet(Backbone):
    """A VGG-style encoder (max-pooling with indices after every stage) and a mirrored decoder that
    max-unpools with those indices. Stage ``i`` of the encoder is a conv to ``widths[i]`` plus one
    (``i < 2``) or two more convs; the decoder mirrors it. Returns the decoder's outputs at strides
    1, 2, 4, … and, last, the pooled encoder output (the bottleneck), finest first.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        n = len(widths)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for i, width in enumerate(widths):
            self.encoder.append(nn.Sequential(_conv(previous, width), _stack(width, 1 if i < 2 else 2)))
            previous = width
        # decoder stage k (run from k = n − 1 down to 0): widths[k] → widths[k − 1] (widths[0] for k = 0)
        self.decoder = nn.ModuleList()
        for k in range(n):
            out = widths[max(k - 1, 0)]
            self.decoder.append(nn.Sequential(_conv(widths[k], out), _stack(out, 1 if k < 2 else 2)))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        levels = [FeatureLevel(widths[max(k - 1, 0)], 2**k) for k in range(n)]
        levels.append(FeatureLevel(widths[-1], 2**n))
        self._inner: SegNetInner | None = None
        self.contract = SegNetContract(tuple(levels), in_channels, widths, self.inner_maps)
        for m in self.modules():  # MTAN's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def inner_maps(self) -> SegNetInner:
        """The inner maps of the latest forward pass (kept until the next one starts)."""
        if self._inner is None:
            raise RuntimeError("SegNet.inner_maps() is only available after a forward pass")
        return self._inner

    def forward(self, x: Tensor) -> list[Tensor]:
        self._inner = None  # release the previous pass's maps before this one allocates its own
        indices, first, out = [], [], []
        for stage in self.encoder:
            first.append(stage[0](x))
            out.append(stage[1](first[-1]))
            x, where = self.pool(out[-1])
            indices.append(where)
        bottleneck = x
        n = len(self.decoder)
        decoded: list[Tensor] = [x] * n
        unpooled: list[Tensor] = [x] * n
        for k in reversed(range(n)):
            unpooled[k] = self.unpool(x, indices[k])
            x = decoded[k] = self.decoder[k](unpooled[k])
        self._inner = SegNetInner(first, out, unpooled)
        return [*decoded, bottleneck]


@register_backbone("segnet")
def segnet(
    in_channels: int = 1,
    *,
    widths: tuple[int, ...] = (64, 128, 256, 512, 512),
    pretrained: str | None = None,
) -> SegNet:
    """SegNet encoder-decoder as MTAN's split baseline (no attention; max-unpooling, BatchNorm); strides 1…32.

    The shared network of MTAN's ``model_segnet_split.py`` (``--type standard``) and of Nash-MTL's
    ``--model segnet``. The papers' headline tables use SegNet+MTAN: this network with MTAN's
    task-specific attention heads (the dense scene tasks' ``task_args.head=mtan``), which read the
    inner maps of every block through ``contract.inner_maps()`` besides the levels.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(
            f"Parameter `widths` should hold at least 2 positive widths. Found `widths = {widths}`."
        )
    model = SegNet(in_channels, widths)
    apply_pretrained(model, pretrained)
    return model
