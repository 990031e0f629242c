"""In-memory thyroid samples as torch tensors: image, mask, TI-RADS class and radiomics target."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import AugmentConfig

# Ultrasound intensities in [0, 1] are centred and scaled to roughly unit variance.
INTENSITY_MEAN = 0.5
INTENSITY_STD = 0.25


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((features - mean) / std).astype(np.float32)


def radiomics_statistics(train_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std from the training split only (NaN rows ignored; std 0 → 1)."""
    mean = np.nanmean(train_features, axis=0)
    std = np.nanstd(train_features, axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return mean, std


class ThyroidArrays(Dataset):
    """Samples from arrays: images/masks (N,H,W) uint8, labels (N,) 0-based class, clinical (N,13).

    With ``augment`` (training only) each sample is augmented as in
    :class:`~.cached_dataset.CachedThyroidDataset`: seeded by ``(seed, epoch, row)`` through
    :meth:`set_epoch`, the same whatever the DataLoader workers.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        labels: np.ndarray,
        clinical: np.ndarray,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        n = len(images)
        if not (len(masks) == len(labels) == len(clinical) == n):
            raise ValueError(
                f"inconsistent lengths: images {n}, masks {len(masks)}, "
                f"labels {len(labels)}, clinical {len(clinical)}"
            )
        self.images = images
        self.masks = masks
        self.labels = labels.astype(np.int64)
        self.clinical = clinical.astype(np.float32)
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (call before creating that epoch's DataLoader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(self.images[index].astype(np.float32) / 255.0).unsqueeze(0)
        mask = torch.from_numpy((self.masks[index] > 0).astype(np.float32)).unsqueeze(0)
        if self.augment is not None:
            from .augment import augment
            from .cached_dataset import augmentation_seed

            generator = torch.Generator().manual_seed(augmentation_seed(self.seed, self.epoch, index))
            image, mask = augment(image, mask, generator, self.augment)
        image = (image - INTENSITY_MEAN) / INTENSITY_STD
        return {
            "image": image,
            "mask": mask,
            "label": torch.tensor(self.labels[index]),
            "clinical": torch.from_numpy(self.clinical[index]),
            "index": torch.tensor(index),
        }
