"""Backbones: encoders that honour a :class:`~mtlbench.backbones.contract.FeatureContract`.

Each module registers its backbones with ``@register_backbone``; :mod:`mtlbench.discovery` finds
them without importing this package's modules, so listing the registry stays cheap. ``timm`` and
``dynamic_network_architectures`` are imported only when a backbone that needs them is built.
"""
