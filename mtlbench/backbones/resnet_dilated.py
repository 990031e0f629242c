"""A dilated ResNet (output stride 8) from timm: the shared encoder of LibMTL's DeepLabV3+ setting."""

from __future__ import annotations

from mtlbench.backbones.pretrained import apply_pretrained
from mtlbench.backbones.timm_backbone import TimmBackbone
from mtlbench.registry import register_backbone


@register_backbone("resnet50_dilated")
def resnet50_dilated(
    in_channels: int = 1,
    *,
    model_name: str = "resnet50",
    pretrained: str | None = None,
) -> TimmBackbone:
    """Dilated ResNet-50 (output stride 8, as LibMTL's ``resnet_dilated``); BatchNorm; local weights only.

    timm's ResNet with ``output_stride=8``: the last two stages keep stride 8 and use dilation 2 and 4
    instead, as LibMTL's encoder does (``LibMTL/model/resnet_dilated.py``). All five levels are
    returned (strides 2, 4, 8, 8, 8; the last is LibMTL's 2048-channel feature map). ``model_name``
    picks another timm ResNet (e.g. ``resnet10t`` for tests). ``pretrained`` is a local checkpoint:
    timm's or torchvision's ResNet weights use the same tensor names (the classifier is ignored).
    """
    import timm

    model = timm.create_model(
        model_name, features_only=True, in_chans=in_channels, pretrained=False, output_stride=8
    )
    backbone = TimmBackbone(model, model_name, in_channels)
    apply_pretrained(backbone.model, pretrained, prefix="model.")
    return backbone
