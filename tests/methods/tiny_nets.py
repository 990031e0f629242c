"""A tiny three-level encoder with a segmentation head and a clinically guided classifier.

Shared by the tests of the representation-level methods (RLAR, Rep-MTL), which compare the
methods with literal computations of their formulas on small shapes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.losses import masked_mse, soft_dice_loss


class TinyNet(nn.Module):
    """``size`` px input → three levels of ``widths`` channels at strides 1, 2, 4; seg head on all levels.

    The classifier embeds the last level (spatial ``mean`` or ``flatten``ed, optionally ``tanh``) into
    ``h`` (5 dims, the first 2 a "clinical" slice) and maps ``h`` to 3 logits.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (4, 6, 8),
        size: int = 16,
        embed: Literal["mean", "flatten"] = "mean",
        tanh_h: bool = False,
    ) -> None:
        super().__init__()
        a, b, c = widths
        self.enc = nn.ModuleList(
            [
                nn.Conv2d(1, a, 3, padding=1),
                nn.Conv2d(a, b, 3, stride=2, padding=1),
                nn.Conv2d(b, c, 3, stride=2, padding=1),
            ]
        )
        self.seg = nn.Conv2d(a + b + c, 1, 1)
        bottleneck = -(-size // 4)
        self.embed_mode = embed
        self.embed = nn.Linear(c if embed == "mean" else c * bottleneck * bottleneck, 5)
        self.cls = nn.Linear(5, 3)
        self.tanh_h = tanh_h

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        feats = []
        for conv in self.enc:
            x = torch.tanh(conv(x))
            feats.append(x)
        size = feats[0].shape[-2:]
        up = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats]
        seg = self.seg(torch.cat(up, 1))
        pooled = feats[-1].mean((2, 3)) if self.embed_mode == "mean" else feats[-1].flatten(1)
        h = self.embed(pooled)
        if self.tanh_h:
            h = torch.tanh(h)
        return feats, {"seg": seg, "h": h, "logits": self.cls(h)}


def make_batch(b: int = 4, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 1, size, size, generator=g),
        "mask": (torch.rand(b, 1, size, size, generator=g) > 0.6).float(),
        "label": torch.randint(0, 3, (b,), generator=g),
        "clinical": torch.randn(b, 2, generator=g),
    }


def losses_of(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], class_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    return {
        "seg": soft_dice_loss(out["seg"], batch["mask"]),
        "cls": F.cross_entropy(out["logits"].float(), batch["label"], weight=class_weight),
        "clin": masked_mse(out["h"][:, :2], batch["clinical"]),
    }
