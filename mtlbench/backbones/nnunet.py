"""nnU-Net v2 encoders from ``dynamic_network_architectures`` with nnU-Net's 2D settings.

The package's encoders default ``norm_op`` and ``nonlin`` to ``None``, which silently builds a
network of bare convolutions; every setting nnU-Net's planner would choose for 2D is therefore
passed explicitly here (see :func:`nnunet_2d_settings`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mtlbench.backbones.contract import Backbone, FeatureContract, FeatureLevel
from mtlbench.backbones.pretrained import apply_pretrained
from mtlbench.conv import Conv2d
from mtlbench.instance_norm import InstanceNorm2d
from mtlbench.registry import register_backbone


def nnunet_2d_settings() -> dict[str, Any]:
    """What nnU-Net v2's planner writes into the plans for a 2D configuration (a fresh copy).

    In-place LeakyReLU is kept as nnU-Net has it: it follows a normalisation whose backward does
    not need its output, and ``leaky_relu_`` with a positive slope supports double backward
    (checked by the contract tests).
    """
    return {
        "conv_op": Conv2d,  # nn.Conv2d with a double backward by convolution kernels
        "conv_bias": True,
        "norm_op": InstanceNorm2d,  # nn.InstanceNorm2d with a closed-form double backward
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        "return_skips": True,
    }


# nnU-Net 2D: 32 features in the first stage, doubled per stage, capped at 512.
BASE_FEATURES = 32
MAX_FEATURES_2D = 512
# Residual blocks per stage of nnU-Net's ResEnc presets (nnUNetPlannerResEncM/L/XL).
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6)


def _per_stage(name: str, value: int | tuple[int, ...], n_stages: int) -> tuple[int, ...]:
    values = (int(value),) * n_stages if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != n_stages or any(v < 1 for v in values):
        raise ValueError(
            f"Parameter `{name}` should be a positive integer or {n_stages} of them (one per stage, "
            f"n_stages = {n_stages}). Found `{name} = {value}`."
        )
    return values


def _stage_settings(
    n_stages: int,
    features_per_stage: tuple[int, ...] | None,
    strides: tuple[int, ...] | None,
    kernel_sizes: int | tuple[int, ...],
) -> dict[str, Any]:
    if n_stages < 1:
        raise ValueError(f"Parameter `n_stages` should be at least 1. Found `n_stages = {n_stages}`.")
    if features_per_stage is None:
        features_per_stage = tuple(min(BASE_FEATURES * 2**i, MAX_FEATURES_2D) for i in range(n_stages))
    if strides is None:
        strides = (1,) + (2,) * (n_stages - 1)
    return {
        "n_stages": n_stages,
        "features_per_stage": _per_stage("features_per_stage", features_per_stage, n_stages),
        "strides": _per_stage("strides", strides, n_stages),
        "kernel_sizes": _per_stage("kernel_sizes", kernel_sizes, n_stages),
    }


class NNUNetEncoder(Backbone):
    """Wraps a ``dynamic_network_architectures`` encoder built with ``return_skips=True``.

    The encoder sits under the attribute ``encoder``, as in nnU-Net's ``PlainConvUNet`` and
    ``ResidualEncoderUNet``, so the ``network_weights`` of an nnU-Net v2 checkpoint load directly
    (the decoder's tensors are reported as unexpected and ignored).
    """

    def __init__(self, encoder: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        levels = []
        cumulative = 1
        for channels, stride in zip(encoder.output_channels, encoder.strides, strict=True):
            per_axis = [int(s) for s in stride] if isinstance(stride, (list, tuple)) else [int(stride)] * 2
            if len(set(per_axis)) != 1:
                raise ValueError(f"anisotropic stride {per_axis} cannot be expressed by a FeatureContract")
            cumulative *= per_axis[0]
            levels.append(FeatureLevel(channels=int(channels), stride=cumulative))
        self.contract = FeatureContract(levels=tuple(levels), in_channels=in_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.encoder(x))


@register_backbone("nnunet_plain")
def nnunet_plain(
    in_channels: int = 1,
    *,
    n_stages: int = 6,
    features_per_stage: tuple[int, ...] | None = None,
    strides: tuple[int, ...] | None = None,
    n_conv_per_stage: int | tuple[int, ...] = 2,
    kernel_sizes: int | tuple[int, ...] = 3,
    pretrained: str | None = None,
) -> NNUNetEncoder:
    """nnU-Net v2 plain conv encoder (PlainConvEncoder, InstanceNorm, LeakyReLU, 2D defaults).

    ``features_per_stage`` defaults to ``min(32 * 2**i, 512)``, ``strides`` to ``(1, 2, 2, ...)``;
    ``pretrained`` may be a local nnU-Net v2 checkpoint (``checkpoint_final.pth``) or a
    checkpoint of this backbone.
    """
    from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder

    stages = _stage_settings(n_stages, features_per_stage, strides, kernel_sizes)
    encoder = PlainConvEncoder(
        input_channels=in_channels,
        n_conv_per_stage=_per_stage("n_conv_per_stage", n_conv_per_stage, n_stages),
        **stages,
        **nnunet_2d_settings(),
    )
    model = NNUNetEncoder(encoder, in_channels)
    apply_pretrained(model, pretrained)
    return model


@register_backbone("nnunet_residual")
def nnunet_residual(
    in_channels: int = 1,
    *,
    n_stages: int = 6,
    features_per_stage: tuple[int, ...] | None = None,
    strides: tuple[int, ...] | None = None,
    n_blocks_per_stage: int | tuple[int, ...] | None = None,
    kernel_sizes: int | tuple[int, ...] = 3,
    pretrained: str | None = None,
) -> NNUNetEncoder:
    """nnU-Net v2 residual encoder (ResidualEncoder, ResEnc-M-like blocks, InstanceNorm, LeakyReLU).

    ``n_blocks_per_stage`` (two-conv BasicBlockD residual blocks) defaults to nnU-Net ResEnc's
    ``(1, 3, 4, 6, 6, 6, ...)``; the other options are as for ``nnunet_plain``.
    """
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

    stages = _stage_settings(n_stages, features_per_stage, strides, kernel_sizes)
    if n_blocks_per_stage is None:
        if n_stages > len(RESENC_BLOCKS_PER_STAGE):
            raise ValueError(
                f"Parameter `n_blocks_per_stage` must be given for more than {len(RESENC_BLOCKS_PER_STAGE)} "
                f"stages. Found `n_stages = {n_stages}`."
            )
        n_blocks_per_stage = RESENC_BLOCKS_PER_STAGE[:n_stages]
    encoder = ResidualEncoder(
        input_channels=in_channels,
        n_blocks_per_stage=_per_stage("n_blocks_per_stage", n_blocks_per_stage, n_stages),
        block=BasicBlockD,
        **stages,
        **nnunet_2d_settings(),
    )
    model = NNUNetEncoder(encoder, in_channels)
    apply_pretrained(model, pretrained)
    return model
