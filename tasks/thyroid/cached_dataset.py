"""Thyroid samples served from a :class:`~.preprocess.PreprocessedCache`, with optional augmentation.

Items are the dicts of :class:`~.dataset.ThyroidArrays` (``image`` (1, S, S) normalised with
``INTENSITY_MEAN``/``INTENSITY_STD``, ``mask`` (1, S, S) float {0, 1}, ``label`` int64, ``clinical`` (13,)
float32, ``index`` the position in this dataset) plus ``original_size`` (2,) int64, the sample's (H, W)
before preprocessing.

Augmentation (:func:`~.augment.augment`, on intensities in [0, 1] before normalisation) draws from a
``torch.Generator`` seeded from ``(seed, epoch, cache row)``: the same run gives the same augmented
samples whatever the number of DataLoader workers or the order they are asked in, and a sample's
augmentations do not depend on which fold or subset it sits in. Call :meth:`CachedThyroidDataset.set_epoch`
before building each epoch's DataLoader; workers receive a copy of the dataset when the loader starts
iterating, so with ``persistent_workers=True`` a later ``set_epoch`` would not reach them.

The cache's arrays are memory maps opened lazily once per process: pickling the dataset for a worker
copies the cache's folder and per-sample metadata, never the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import AugmentConfig, augment
from .dataset import INTENSITY_MEAN, INTENSITY_STD
from .preprocess import PreprocessedCache

__all__ = ["CachedThyroidDataset", "augmentation_seed"]

_MASK64 = (1 << 64) - 1


def augmentation_seed(seed: int, epoch: int, row: int) -> int:
    """A 63-bit seed mixing (seed, epoch, row) through numpy's ``SeedSequence`` (no nearby collisions)."""
    entropy = [int(seed) & _MASK64, int(epoch) & _MASK64, int(row) & _MASK64]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


class CachedThyroidDataset(Dataset):
    """Rows ``indices`` of a preprocessing cache as training samples.

    ``labels`` (0-based TI-RADS class, -1 when unknown) and ``clinical`` ((·, 13) float32, NaN where
    missing) are indexed by **cache row**, like the cache itself: one array for all splits, and each
    split's dataset picks its rows with ``indices``. ``augment=None`` (or a config with
    ``enabled=False``) serves the cached pixels unchanged.
    """

    def __init__(
        self,
        cache: PreprocessedCache,
        indices: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        clinical: np.ndarray,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        labels = np.asarray(labels)
        clinical = np.asarray(clinical, dtype=np.float32)
        n = len(cache)
        if len(labels) != n or len(clinical) != n:
            raise ValueError(
                f"labels ({len(labels)}) and clinical ({len(clinical)}) must have one row per cache row "
                f"({n}, {cache.path})"
            )
        if clinical.ndim != 2:
            raise ValueError(f"clinical must be (N, features), got shape {clinical.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            bad = int(rows[(rows < 0) | (rows >= n)][0])
            raise IndexError(f"index {bad} out of range for a cache of {n} samples ({cache.path})")
        self.cache = cache
        self.rows = rows
        self.labels = labels.astype(np.int64)
        self.clinical = clinical
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (call before creating that epoch's DataLoader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def cache_row(self, index: int) -> int:
        """The cache row behind dataset position ``index``."""
        return int(self.rows[index])

    def restore_mask(self, index: int, mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """A predicted (…, S, S) mask of sample ``index`` in its original (H, W) pixels (for HD95)."""
        return self.cache.restore(self.cache_row(index), mask)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.cache_row(index)
        # np.array copies out of the read-only memory map (torch wants writable memory).
        image = torch.from_numpy(np.array(self.cache.images[row], dtype=np.float32)).unsqueeze(0) / 255.0
        mask = torch.from_numpy(np.array(self.cache.masks[row] > 0, dtype=np.float32)).unsqueeze(0)
        if self.augment is not None:
            generator = torch.Generator().manual_seed(augmentation_seed(self.seed, self.epoch, row))
            image, mask = augment(image, mask, generator, self.augment)
        image = (image - INTENSITY_MEAN) / INTENSITY_STD
        return {
            "image": image,
            "mask": mask,
            "label": torch.tensor(self.labels[row]),
            "clinical": torch.from_numpy(self.clinical[row].copy()),
            "index": torch.tensor(index),
            "original_size": torch.from_numpy(self.cache.original_sizes[row].copy()),
        }
