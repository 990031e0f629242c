"""Backbones: encoders that honour a :class:`FeatureContract` (built-ins register on import).

``timm`` and ``dynamic_network_architectures`` are imported only when a backbone that needs them
is built, so listing the registry stays cheap.
"""

from mtlbench.backbones import nnunet, timm_backbone, unet
from mtlbench.backbones.contract import Backbone, FeatureContract, FeatureLevel
from mtlbench.backbones.pretrained import PretrainedReport, load_pretrained

__all__ = [
    "Backbone",
    "FeatureContract",
    "FeatureLevel",
    "PretrainedReport",
    "load_pretrained",
    "nnunet",
    "timm_backbone",
    "unet",
]
