"""resnet50_dilated follows LibMTL's dilated encoder and loads an ImageNet-style ResNet checkpoint."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from mtlbench.registry import create_backbone


def test_dilation_pattern_is_libmtls() -> None:
    """LibMTL's ``_nostride_dilate``: layer3's first 3×3 conv dilation 1, the rest 2; layer4: 2, then 4."""
    model = create_backbone("resnet50_dilated", in_channels=3).model
    assert [b.conv2.dilation[0] for b in model.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in model.layer4] == [2, 4, 4]
    assert all(b.conv2.stride == (1, 1) for b in [*model.layer3, *model.layer4])
    assert model.layer3[0].downsample[0].stride == (1, 1) and model.layer4[0].downsample[0].stride == (1, 1)
    backbone = create_backbone("resnet50_dilated", in_channels=3)
    assert backbone.contract.channels()[-1] == 2048 and backbone.contract.strides() == [2, 4, 8, 8, 8]


def test_a_classification_checkpoint_loads_without_its_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = timm.create_model("resnet10t", pretrained=False, in_chans=3)
    path = tmp_path / "resnet10t.pth"
    torch.save(classifier.state_dict(), path)  # the names torchvision and timm ResNets share, plus fc.*
    backbone = create_backbone(
        "resnet50_dilated", in_channels=3, model_name="resnet10t", pretrained=str(path)
    )
    loaded = backbone.model.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
