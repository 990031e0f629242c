"""MTAN (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention"): task attention
over the shared SegNet, as in ``im2im_pred/model_segnet_mtan.py`` of the authors' code.

Per task and per SegNet block, an attention mask (1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid)
is computed from the block's first-conv output (encoder) or unpooled input (decoder), concatenated
with the task's previous attended features, and multiplied with the block's output. Between
blocks the attended features pass a 3×3 conv → BN → ReLU that is **shared by all tasks** (MTAN's
``encoder_block_att``/``decoder_block_att``) and are max-pooled (encoder) or bilinearly upsampled
(decoder, align_corners=True). The last attended map goes through the task's prediction layer.

With stage widths ``w`` (``n`` stages), encoder stage ``j``: mask ``(w_0 | 2·w_j) → w_j → w_j``
and shared conv ``w_j → w_{min(j+1, n−1)}``; decoder stage ``k``: shared conv ``w_k → w_{max(k−1, 0)}``
and mask ``w_k + w_{max(k−1,0)} → w_{max(k−1,0)} → w_{max(k−1,0)}``. With MTAN's widths
(64, 128, 256, 512, 512) every layer has the official shape; for other widths the deepest decoder
conv maps to ``w_{n−2}`` where the official code (which assumes ``w_{n−2} = w_{n−1}``) keeps ``w_{n−1}``.

The shared convs are one module handed to every task's head: the optimizer and the parameter
count see them once, they receive the sum of the tasks' gradients, and — as in LibMTL's MTAN,
where only the backbone is "shared" — gradient-combining methods treat them, like the masks, as
head parameters. (Nash-MTL's and FAMO's code treat every parameter but the prediction layers as
shared.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.backbones.segnet import SegNetContract, SegNetInner
from mtlbench.errors import ConfigError

from .heads import SegNetHead, input_size


def _mask(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
        nn.Conv2d(out_ch, out_ch, 1),
        nn.BatchNorm2d(out_ch),
        nn.Sigmoid(),
    )


def _conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU())


def _init(module: nn.Module) -> None:
    """MTAN's initialisation: Xavier-normal conv weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


def segnet_widths(contract: object) -> tuple[int, ...]:
    if not isinstance(contract, SegNetContract) or not contract.widths or contract.inner_maps is None:
        raise ConfigError(
            "task_args.head=mtan needs --backbone segnet: MTAN's attention reads the SegNet's "
            "encoder and decoder blocks"
        )
    return contract.widths


class MTANSharedConvs(nn.Module):
    """The 3×3 conv blocks between attention modules, one per stage, shared by every task."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        n = len(widths)
        self.encoder = nn.ModuleList(_conv(widths[j], widths[min(j + 1, n - 1)]) for j in range(n))
        self.decoder = nn.ModuleList(_conv(widths[k], widths[max(k - 1, 0)]) for k in range(n))
        _init(self)


class MTANHead(nn.Module):
    """One task's attention modules over every SegNet block, then MTAN's prediction layer."""

    def __init__(self, contract: SegNetContract, out_channels: int, shared: MTANSharedConvs) -> None:
        super().__init__()
        widths = segnet_widths(contract)
        n = len(widths)
        self.contract = contract
        self.shared = shared
        self.encoder_masks = nn.ModuleList(
            _mask(widths[0] if j == 0 else 2 * widths[j], widths[j]) for j in range(n)
        )
        self.decoder_masks = nn.ModuleList(
            _mask(widths[k] + widths[max(k - 1, 0)], widths[max(k - 1, 0)]) for k in range(n)
        )
        _init(self.encoder_masks)
        _init(self.decoder_masks)
        self.prediction = SegNetHead(contract, out_channels)

    def inner_maps(self, features: list[Tensor]) -> SegNetInner:
        """The backbone's inner maps of the pass that gave ``features``, in their precision."""
        inner = self.contract.inner_maps()  # type: ignore[misc]
        if inner.decoder_in[0].shape[-2:] != features[0].shape[-2:] or len(inner.decoder_in[0]) != len(
            features[0]
        ):
            raise RuntimeError("MTANHead: the SegNet's inner maps are not from the pass of these features")
        dtype = features[0].dtype
        return SegNetInner(*([t.to(dtype) for t in maps] for maps in vars(inner).values()))

    def attend(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The task's last attended map and its masks (encoder stages, then decoder stages deepest first)."""
        inner = self.inner_maps(features)
        masks: list[Tensor] = []
        x = inner.encoder_first[0]
        for j, first in enumerate(inner.encoder_first):
            masks.append(self.encoder_masks[j](first if j == 0 else torch.cat([first, x], 1)))
            x = F.max_pool2d(self.shared.encoder[j](masks[-1] * inner.encoder_out[j]), 2, 2)
        for k in reversed(range(len(inner.decoder_in))):
            unpooled = inner.decoder_in[k]
            x = F.interpolate(x, size=unpooled.shape[-2:], mode="bilinear", align_corners=True)
            x = self.shared.decoder[k](x)
            masks.append(self.decoder_masks[k](torch.cat([unpooled, x], 1)))
            x = masks[-1] * features[k]
        return x, masks

    def forward(self, features: list[Tensor]) -> Tensor:
        x, _ = self.attend(features)
        return self.prediction.predict(x, input_size(features, self.contract))


def mtan_heads(contract: object, channels: dict[str, int]) -> nn.ModuleDict:
    """One :class:`MTANHead` per task (name → output channels), all sharing one set of shared convs."""
    widths = segnet_widths(contract)
    shared = MTANSharedConvs(widths)
    return nn.ModuleDict(
        {task: MTANHead(contract, out, shared) for task, out in channels.items()}  # type: ignore[arg-type]
    )
