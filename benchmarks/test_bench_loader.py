"""The thyroid training data path: ``CachedThyroidDataset.__getitem__`` and a DataLoader epoch.

A preprocessing cache of 64 synthetic 400 × 500 frames (``loader_throughput.SyntheticReader``) is built
once at 128 px in a temporary folder. Timed: 16 ``__getitem__`` calls with and without augmentation, and
one shuffled epoch through ``DataLoader(batch_size=8, num_workers=0)`` with augmentation (worker
processes are measured by ``loader_throughput.py``; on two cores their start-up dominates). Checked:
un-augmented items are the cached pixels, normalised; augmented items are a function of (seed, epoch,
row); an epoch yields every sample once with the right shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from loader_throughput import SyntheticReader, make_dataset
from torch.utils.data import DataLoader

from mtlbench.tasks.thyroid.augment import AugmentConfig
from mtlbench.tasks.thyroid.cached_dataset import CachedThyroidDataset
from mtlbench.tasks.thyroid.dataset import INTENSITY_MEAN, INTENSITY_STD
from mtlbench.tasks.thyroid.preprocess import PreprocessedCache, build_cache

IMAGES = 64
SIZE = 128
ITEMS = 16
BATCH = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PreprocessedCache:
    reader = SyntheticReader(400, 500)
    folder: Path = tmp_path_factory.mktemp("loader-cache")
    return build_cache(reader, reader.records(IMAGES), SIZE, folder, workers=1, progress=False)


def items(dataset: CachedThyroidDataset) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for i in range(ITEMS)]


@pytest.mark.benchmark(group="loader")
@pytest.mark.parametrize("augmented", [False, True], ids=["augment_off", "augment_on"])
def test_getitem(benchmark: Any, cache: PreprocessedCache, augmented: bool) -> None:
    dataset = make_dataset(cache, AugmentConfig() if augmented else None)
    out = benchmark.pedantic(items, args=(dataset,), rounds=10, warmup_rounds=1)
    for i, item in enumerate(out):
        assert item["image"].shape == (1, SIZE, SIZE) and item["mask"].shape == (1, SIZE, SIZE)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        if not augmented:
            pixels = torch.from_numpy(np.asarray(cache.images[i], dtype=np.float32)) / 255.0
            assert torch.allclose(item["image"][0], (pixels - INTENSITY_MEAN) / INTENSITY_STD, atol=1e-6)
            assert torch.equal(item["mask"][0], torch.from_numpy(np.asarray(cache.masks[i] > 0, np.float32)))
    if augmented:
        again = dataset[3]
        assert torch.equal(again["image"], out[3]["image"]), "augmentation is not a function of the row"
        dataset.set_epoch(1)
        assert not torch.equal(dataset[3]["image"], out[3]["image"]), "a new epoch drew the same augmentation"


def one_epoch(dataset: CachedThyroidDataset) -> list[dict[str, torch.Tensor]]:
    loader = DataLoader(
        dataset, batch_size=BATCH, num_workers=0, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    return list(loader)


@pytest.mark.benchmark(group="loader")
def test_dataloader_epoch(benchmark: Any, cache: PreprocessedCache) -> None:
    dataset = make_dataset(cache, AugmentConfig())
    batches = benchmark.pedantic(one_epoch, args=(dataset,), rounds=5, warmup_rounds=1)
    assert len(batches) == IMAGES // BATCH
    assert all(b["image"].shape == (BATCH, 1, SIZE, SIZE) for b in batches)
    seen = torch.cat([b["index"] for b in batches]).sort().values
    assert torch.equal(seen, torch.arange(IMAGES)), "an epoch must serve every sample exactly once"
