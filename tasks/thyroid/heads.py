"""The thyroid task's heads: U-Net segmentation decoder and the clinically guided classifier."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mtlbench.backbones.contract import FeatureContract
from mtlbench.heads import UNetDecoder

SegDecoder = Literal["bilinear", "nnunet"]
SEG_DECODERS: tuple[SegDecoder, ...] = ("bilinear", "nnunet")


class SegmentationHead(nn.Module):
    """Nodule mask logits (B, 1, H, W) at the input resolution.

    ``decoder="nnunet"`` is nnU-Net v2's decoder (transposed-conv upsampling), into which a
    pretrained nnU-Net checkpoint loads whole; ``"bilinear"`` upsamples without parameters.
    """

    def __init__(self, contract: FeatureContract, decoder: SegDecoder = "bilinear") -> None:
        super().__init__()
        upsampling = "transposed" if decoder == "nnunet" else "bilinear"
        self.decoder = UNetDecoder(contract, out_channels=1, upsampling=upsampling)
        self.finest_stride = contract.strides()[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        h, w = features[0].shape[-2:]
        size = (h * self.finest_stride, w * self.finest_stride)
        return self.decoder(features, output_size=size)


class ClinicallyGuidedClassifier(nn.Module):
    """Paper Eq. 1–2: bottleneck → embedding ``h = [h_tirads, h_deep]`` (K dims) → logits ``W h + b``.

    The bottleneck is average- and max-pooled before the embedding MLP.

    The first ``n_clinical`` embedding dimensions form the clinically guided slice ``h_tirads``,
    regressed onto standardised radiomics targets during training only; ``h_deep`` holds the
    remaining ``K − n_clinical`` free features. Both feed the final linear classifier ``W``.
    No batch normalisation, so samples stay independent (per-sample representation gradients).
    """

    def __init__(
        self,
        contract: FeatureContract,
        num_classes: int,
        embedding_dim: int,
        n_clinical: int,
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embedding_dim <= n_clinical:
            raise ValueError(
                f"embedding_dim must exceed the {n_clinical} clinical features, "
                f"got embedding_dim={embedding_dim}"
            )
        self.n_clinical = n_clinical
        self.embed = nn.Sequential(
            nn.Linear(2 * contract.bottleneck.channels, hidden),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            nn.Linear(hidden, embedding_dim),
        )
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        z = features[-1]
        # Average and max pooling: the max keeps small bright findings (echogenic foci) visible.
        pooled = torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)
        h = self.embed(pooled)
        return {"h": h, "h_tirads": h[:, : self.n_clinical], "logits": self.classifier(h)}
