"""The cached dataset: ThyroidArrays' item contract, seeded augmentation, workers, lazy memory maps."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from mtlbench.tasks.thyroid.augment import AugmentConfig
from mtlbench.tasks.thyroid.cached_dataset import CachedThyroidDataset, augmentation_seed
from mtlbench.tasks.thyroid.dataset import ThyroidArrays
from mtlbench.tasks.thyroid.preprocess import PreprocessedCache, build_cache
from mtlbench.tasks.thyroid.readers import ThyroidRecord

COUNT = 12
SIZE = 24


class SyntheticReader:
    """Seeded random samples of varied sizes, each with a rectangular nodule."""

    name = "synthetic"
    root = "synthetic://test_cached_dataset"

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(record.index)
        height, width = record.size
        image = rng.integers(0, 256, (height, width), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = 1
        return image, mask


def records() -> list[ThyroidRecord]:
    return [
        ThyroidRecord(f"s{i}", f"p{i // 2}", "synthetic", "-", "-", index=i, size=(20 + 3 * i, 40 - i))
        for i in range(COUNT)
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PreprocessedCache:
    folder = tmp_path_factory.mktemp("cache")
    return build_cache(SyntheticReader(), records(), SIZE, folder, workers=1, progress=False)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([i % 5 if i != 3 else -1 for i in range(COUNT)])


@pytest.fixture
def clinical() -> np.ndarray:
    values = np.random.default_rng(0).normal(size=(COUNT, 13)).astype(np.float32)
    values[2, 4] = np.nan
    return values


def test_items_match_thyroid_arrays_without_augmentation(cache, labels, clinical) -> None:
    rows = [5, 3, 7, 2]
    dataset = CachedThyroidDataset(cache, rows, labels, clinical, augment=None, seed=0)
    reference = ThyroidArrays(
        np.asarray(cache.images)[rows], np.asarray(cache.masks)[rows], labels[rows], clinical[rows]
    )
    assert len(dataset) == len(rows)
    for i, row in enumerate(rows):
        item, expected = dataset[i], reference[i]
        assert set(item) == set(expected) | {"original_size"}
        for key in expected:
            assert item[key].dtype == expected[key].dtype and item[key].shape == expected[key].shape, key
            torch.testing.assert_close(item[key], expected[key], equal_nan=True, rtol=0, atol=0)
        assert item["original_size"].tolist() == [20 + 3 * row, 40 - row]
        assert item["original_size"].dtype == torch.int64
    assert int(dataset[rows.index(3)]["label"]) == -1
    assert torch.isnan(dataset[rows.index(2)]["clinical"][4])


def test_augmentation_is_seeded_by_seed_epoch_and_row(cache, labels, clinical) -> None:
    dataset = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=AugmentConfig(), seed=3)
    first = [dataset[i]["image"] for i in (4, 1, 7)]
    again = [dataset[i]["image"] for i in (7, 4, 1)]  # order of access does not matter
    assert (
        torch.equal(first[0], again[1])
        and torch.equal(first[1], again[2])
        and torch.equal(first[2], again[0])
    )
    assert not torch.equal(first[0], first[1])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[4]["image"], first[0])
    dataset.set_epoch(0)
    assert torch.equal(dataset[4]["image"], first[0])
    other_seed = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=AugmentConfig(), seed=4)
    assert not torch.equal(other_seed[4]["image"], first[0])
    # The seed is the cache row's, not the position's: a subset sees the same augmentation.
    subset = CachedThyroidDataset(cache, [9, 4], labels, clinical, augment=AugmentConfig(), seed=3)
    assert torch.equal(subset[1]["image"], first[0])


def test_augmented_masks_stay_binary_and_aligned(cache, labels, clinical) -> None:
    dataset = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=AugmentConfig(), seed=0)
    plain = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=None)
    moved = 0
    for i in range(COUNT):
        mask = dataset[i]["mask"]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        moved += not torch.equal(mask, plain[i]["mask"])
    assert moved > 0


def test_disabled_config_serves_the_cached_pixels(cache, labels, clinical) -> None:
    disabled = CachedThyroidDataset(
        cache, range(COUNT), labels, clinical, AugmentConfig(enabled=False), seed=0
    )
    plain = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=None)
    assert torch.equal(disabled[6]["image"], plain[6]["image"])


def stack(loader: DataLoader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_worker_processes_agree_with_the_main_process(cache, labels, clinical) -> None:
    dataset = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=AugmentConfig(), seed=11)
    dataset.set_epoch(2)
    main = stack(DataLoader(dataset, batch_size=4, num_workers=0))
    workers = stack(DataLoader(dataset, batch_size=4, num_workers=2))
    assert main.keys() == workers.keys()
    for key in main:
        torch.testing.assert_close(main[key], workers[key], equal_nan=True, rtol=0, atol=0)


def test_pickling_carries_the_path_not_the_pixels(cache, labels, clinical) -> None:
    dataset = CachedThyroidDataset(cache, range(COUNT), labels, clinical, augment=AugmentConfig(), seed=0)
    expected = dataset[3]
    assert dataset.cache._arrays is not None  # mapped in this process
    blob = pickle.dumps(dataset)
    assert len(blob) < cache.images.nbytes  # the arrays are 2 × 12 × 24 × 24 bytes; metadata is smaller
    assert cache.images.tobytes() not in blob
    copy = pickle.loads(blob)
    assert copy.cache._arrays is None and copy.cache.path == cache.path
    item = copy[3]
    assert copy.cache._arrays is not None
    for key in expected:
        torch.testing.assert_close(item[key], expected[key], rtol=0, atol=0)


def test_restore_mask_gives_original_geometry(cache, labels, clinical) -> None:
    dataset = CachedThyroidDataset(cache, [6, 1], labels, clinical)
    restored = dataset.restore_mask(0, dataset[0]["mask"][0])
    assert tuple(restored.shape) == (20 + 3 * 6, 40 - 6)
    _, original = SyntheticReader().load(records()[6])
    # 38×34 shrunk to 24 px (scale 0.63 >= 1/3): every restored pixel is within 1 px of the truth.
    restored = restored.numpy().astype(bool)
    box = np.ones((3, 3), dtype=bool)
    assert not (restored & ~ndimage.binary_dilation(original, box)).any()
    assert not (ndimage.binary_erosion(original, box) & ~restored).any()
    assert restored.sum() > 0


def test_argument_checks(cache, labels, clinical) -> None:
    with pytest.raises(ValueError, match="one row per cache row"):
        CachedThyroidDataset(cache, range(3), labels[:3], clinical[:3])
    with pytest.raises(IndexError, match=f"index {COUNT} out of range"):
        CachedThyroidDataset(cache, [0, COUNT], labels, clinical)
    with pytest.raises(ValueError, match="clinical must be"):
        CachedThyroidDataset(cache, range(3), labels, clinical[:, 0])


def test_augmentation_seeds_do_not_collide_nearby() -> None:
    seeds = {augmentation_seed(s, e, r) for s in range(3) for e in range(5) for r in range(50)}
    assert len(seeds) == 3 * 5 * 50
    assert all(0 <= s < 2**63 for s in seeds)
