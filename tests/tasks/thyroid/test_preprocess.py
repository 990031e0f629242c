"""The preprocessing cache: letterbox geometry, round trips, build, reuse, atomicity, corrupt files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from mtlbench.errors import DataError
from mtlbench.tasks.thyroid.preprocess import (
    PreprocessedCache,
    build_cache,
    cache_key,
    letterbox,
    letterbox_geometry,
    restore_geometry,
)
from mtlbench.tasks.thyroid.readers import ThyroidRecord, open_reader

#: (H, W) of the samples of the fake folder data set: landscape, portrait, square, odd sizes.
SIZES = ((30, 41), (45, 20), (24, 24), (17, 52), (33, 35))


def lobulated_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A nodule-like mask: an off-centre ellipse with a Fourier-lobulated contour."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width].astype(np.float64)
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    ry, rx = height * 0.25, width * 0.3
    angle = np.arctan2((rows - cy) / ry, (cols - cx) / rx)
    radius = 1.0 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.08 * np.cos(7 * angle)
    return ((((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2) <= radius**2).astype(np.uint8)


def make_folder_dataset(root: Path, sizes: tuple[tuple[int, int], ...] = SIZES, seed: int = 0) -> Path:
    """``images/``, ``masks/`` and ``labels.csv`` of the folder format, one sample per size."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "patient", "tirads"])
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
            Image.fromarray(lobulated_mask(h, w, seed=i) * 255).save(root / "masks" / f"s{i}.png")
            writer.writerow([f"s{i}", f"p{i}", 1 + i % 5])
    return root


class CountingReader:
    """Wraps a reader, counting ``load`` calls and optionally failing at one record."""

    def __init__(self, inner, fail_at: str | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.root = inner.root
        self.loads = 0
        self.fail_at = fail_at

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        if record.sample_id == self.fail_at:
            raise DataError(f"{record.image}: simulated failure")
        self.loads += 1
        return self.inner.load(record)


@pytest.fixture
def folder(tmp_path: Path):
    reader = open_reader(make_folder_dataset(tmp_path / "data"), "folder")
    return reader, list(reader.records())


# ------------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize(
    ("hw", "size", "expected"),
    [
        ((532, 727), 512, ((375, 512), (68, 0))),
        ((802, 1054), 512, ((390, 512), (61, 0))),
        ((1054, 802), 256, ((256, 195), (0, 30))),
        ((12, 16), 64, ((48, 64), (8, 0))),
        ((40, 40), 32, ((32, 32), (0, 0))),
    ],
)
def test_letterbox_geometry(hw: tuple[int, int], size: int, expected) -> None:
    scale, resized, pad = letterbox_geometry(*hw, size)
    assert scale == pytest.approx(size / max(hw))
    assert (resized, pad) == expected


def test_letterbox_places_the_sample_in_the_centre_with_zero_padding() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (30, 60), dtype=np.uint8)  # no zero pixel: padding is recognisable
    mask = np.zeros((30, 60), dtype=np.uint8)
    mask[10:20, 20:40] = 255
    out_image, out_mask, scale, (top, left) = letterbox(image, mask, 40)
    assert out_image.shape == out_mask.shape == (40, 40) and out_image.dtype == out_mask.dtype == np.uint8
    assert (scale, top, left) == (pytest.approx(2 / 3), 10, 0)
    assert (out_image[:10] == 0).all() and (out_image[30:] == 0).all()
    assert (out_image[10:30] > 0).all()
    assert set(np.unique(out_mask)) == {0, 1}
    rows, cols = np.nonzero(out_mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (17, 22, 13, 26)


@pytest.mark.parametrize(
    ("hw", "size", "tolerance"),
    [
        ((532, 727), 512, 1),
        ((802, 1054), 512, 1),
        ((532, 727), 256, 1),
        ((727, 532), 300, 1),
        ((802, 1054), 256, 2),  # scale 0.243 < 1/3: the documented bound is 2 px
    ],
)
def test_restore_geometry_round_trips_within_the_documented_distance(hw, size, tolerance) -> None:
    original = lobulated_mask(*hw, seed=3)
    image = np.zeros(hw, dtype=np.uint8)
    _, small, scale, pad = letterbox(image, original, size)
    restored = restore_geometry(small, hw, scale, pad)
    assert restored.shape == hw and restored.dtype == np.uint8
    box = np.ones((2 * tolerance + 1, 2 * tolerance + 1), dtype=bool)
    # Every restored pixel copies an original one at most `tolerance` px away along each axis.
    assert not (restored.astype(bool) & ~ndimage.binary_dilation(original, box)).any()
    assert not (ndimage.binary_erosion(original, box) & ~restored.astype(bool)).any()
    # ... and the tolerance is needed: the round trip is not exact when shrinking.
    assert (restored != original).any()


def test_restore_geometry_is_exact_when_the_cache_enlarged_the_sample() -> None:
    original = lobulated_mask(12, 16)
    _, big, scale, pad = letterbox(np.zeros((12, 16), np.uint8), original, 64)
    np.testing.assert_array_equal(restore_geometry(big, (12, 16), scale, pad), original)


def test_restore_geometry_accepts_torch_stacks_and_keeps_the_dtype() -> None:
    original = lobulated_mask(53, 72)
    _, small, scale, pad = letterbox(np.zeros((53, 72), np.uint8), original, 40)
    stack = torch.from_numpy(np.stack([small, 1 - small])).float()
    restored = restore_geometry(stack, (53, 72), scale, pad)
    assert isinstance(restored, torch.Tensor) and restored.dtype == torch.float32
    assert restored.shape == (2, 53, 72)
    np.testing.assert_array_equal(restored[0].numpy(), restore_geometry(small, (53, 72), scale, pad))
    with pytest.raises(ValueError, match="does not fit"):
        restore_geometry(small, (53, 72), scale, (30, 0))


# ------------------------------------------------------------------------------------------------ building
def test_build_cache_layout_and_contents(folder, tmp_path: Path) -> None:
    reader, records = folder
    cache = build_cache(reader, records, 32, tmp_path / "cache", workers=1, progress=False)
    assert cache.path.parent == tmp_path / "cache"
    assert re.fullmatch(r"preprocess-32px-[0-9a-f]{16}", cache.path.name)
    assert sorted(p.name for p in cache.path.iterdir()) == ["images.npy", "masks.npy", "meta.json"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path.name]  # no temporary left
    assert len(cache) == len(SIZES) and cache.sample_ids == tuple(r.sample_id for r in records)
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert cache.images.shape == cache.masks.shape == (len(SIZES), 32, 32)
    np.testing.assert_array_equal(cache.original_sizes, np.array(SIZES))
    for row, record in enumerate(records):
        image, mask = reader.load(record)
        expected_image, expected_mask, scale, pad = letterbox(image, mask, 32)
        np.testing.assert_array_equal(cache.images[row], expected_image)
        np.testing.assert_array_equal(cache.masks[row], expected_mask)
        assert cache.geometry(row) == (image.shape, pytest.approx(scale), pad)
        assert cache.restore(row, cache.masks[row]).shape == image.shape
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["reader"] == "folder" and meta["size"] == 32 and meta["key"] == cache.key


def test_parallel_build_equals_serial_build(folder, tmp_path: Path) -> None:
    reader, records = folder
    serial = build_cache(reader, records, 40, tmp_path / "one", workers=1, progress=False)
    parallel = build_cache(reader, records, 40, tmp_path / "two", workers=2, progress=False)
    assert serial.path.name == parallel.path.name  # the key does not depend on workers
    np.testing.assert_array_equal(serial.images, parallel.images)
    np.testing.assert_array_equal(serial.masks, parallel.masks)
    assert (serial.path / "meta.json").read_text() == (parallel.path / "meta.json").read_text()


def test_a_complete_cache_is_reused_without_loading(folder, tmp_path: Path) -> None:
    reader, records = folder
    first = CountingReader(reader)
    built = build_cache(first, records, 24, tmp_path, workers=1, progress=False)
    assert first.loads == len(records)
    again = CountingReader(reader)
    reused = build_cache(again, records, 24, tmp_path, workers=1, progress=False)
    assert again.loads == 0 and reused.path == built.path
    np.testing.assert_array_equal(reused.images, built.images)


def test_the_key_follows_size_records_and_root(folder, tmp_path: Path) -> None:
    reader, records = folder
    key = cache_key(reader, records, 32)
    assert key == cache_key(reader, list(records), 32)
    assert key != cache_key(reader, records, 33)
    assert key != cache_key(reader, records[:-1], 32)
    assert key != cache_key(reader, records[::-1], 32)
    other = open_reader(make_folder_dataset(tmp_path / "elsewhere"), "folder")
    assert key != cache_key(other, records, 32)


def test_an_interrupted_build_leaves_nothing_under_the_cache_name(folder, tmp_path: Path) -> None:
    reader, records = folder
    failing = CountingReader(reader, fail_at=records[3].sample_id)
    with pytest.raises(DataError, match="simulated failure"):
        build_cache(failing, records, 32, tmp_path / "cache", workers=1, progress=False)
    assert failing.loads == 3
    assert list((tmp_path / "cache").iterdir()) == []
    # A later complete build succeeds and is complete.
    cache = build_cache(reader, records, 32, tmp_path / "cache", workers=1, progress=False)
    assert len(cache) == len(records)


def test_a_bad_sample_shape_names_the_file(folder, tmp_path: Path) -> None:
    reader, records = folder

    class Colour(CountingReader):
        def load(self, record):
            image, mask = super().load(record)
            return np.stack([image] * 3, axis=-1), mask

    with pytest.raises(DataError, match=re.escape(records[0].image)):
        build_cache(Colour(reader), records, 32, tmp_path, workers=1, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
@pytest.mark.parametrize("name", ["images.npy", "masks.npy"])
def test_a_damaged_array_is_a_clear_error_then_a_rebuild(folder, tmp_path: Path, damage, name) -> None:
    reader, records = folder
    cache = build_cache(reader, records, 32, tmp_path / "cache", workers=1, progress=False)
    reference = np.array(cache.images), np.array(cache.masks)
    file = cache.path / name
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:-100])
    elif damage == "garbage":
        file.write_bytes(b"not a numpy file")
    else:
        file.unlink()
    with pytest.raises(DataError, match=re.escape(str(file))):
        PreprocessedCache.open(cache.path)
    with pytest.warns(RuntimeWarning, match=re.escape(str(file))):
        rebuilt = build_cache(reader, records, 32, tmp_path / "cache", workers=1, progress=False)
    np.testing.assert_array_equal(rebuilt.images, reference[0])
    np.testing.assert_array_equal(rebuilt.masks, reference[1])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path.name]


@pytest.mark.parametrize("content", [None, "{not json", '{"format": "mtlbench.tasks.thyroid.preprocess/1"}'])
def test_missing_or_malformed_metadata_names_the_file(folder, tmp_path: Path, content) -> None:
    reader, records = folder
    cache = build_cache(reader, records, 32, tmp_path, workers=1, progress=False)
    meta = cache.path / "meta.json"
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    with pytest.raises(DataError, match=re.escape(str(meta))):
        PreprocessedCache.open(cache.path)


def test_build_cache_validates_its_arguments(folder, tmp_path: Path) -> None:
    reader, records = folder
    with pytest.raises(ValueError, match="`size = 0`"):
        build_cache(reader, records, 0, tmp_path)
    with pytest.raises(ValueError, match="`workers = 0`"):
        build_cache(reader, records, 32, tmp_path, workers=0)
    with pytest.raises(ValueError, match="zero records"):
        build_cache(reader, [], 32, tmp_path)
