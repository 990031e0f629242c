"""The content-keyed radiomics cache: hits, misses, key contents, atomic writes and corrupt files."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from mtlbench.tasks.thyroid import radiomics as thyroid_radiomics
from mtlbench.tasks.thyroid.radiomics_cache import cache_key, cache_path, cached_features


def make_batch(count: int = 4, size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, size, size)).astype(np.uint8)
    rows, cols = np.mgrid[:size, :size]
    masks = np.stack(
        [np.hypot(rows - size / 2, cols - size / 2) <= rng.uniform(size / 6, size / 3) for _ in range(count)]
    )
    return images, masks


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    return make_batch()


@pytest.fixture
def fake_compute(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace the extraction with a cheap deterministic stand-in that records its calls."""
    calls: list[dict] = []

    def compute(images, masks, workers=None, progress=True, *, ring_width=3):
        calls.append(
            {"count": len(images), "workers": workers, "progress": progress, "ring_width": ring_width}
        )
        sums = np.array([float(np.asarray(image, dtype=np.float64).sum()) for image in images])
        return np.outer(sums, np.arange(1, 14, dtype=np.float64)) + ring_width

    monkeypatch.setattr(thyroid_radiomics, "compute_features_batch", compute)
    return calls


def forbid_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def compute(*args, **kwargs):
        raise AssertionError("features were recomputed although the cache holds them")

    monkeypatch.setattr(thyroid_radiomics, "compute_features_batch", compute)


def test_second_call_loads_from_disk(batch, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = batch
    first = cached_features(images, masks, tmp_path, workers=1, progress=False)
    np.testing.assert_array_equal(
        first, thyroid_radiomics.compute_features_batch(images, masks, workers=1, progress=False)
    )
    path = cache_path(tmp_path, cache_key(images, masks))
    assert re.fullmatch(r"radiomics-[0-9a-f]{16}\.npy", path.name)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind
    np.testing.assert_array_equal(np.load(path), first)

    forbid_compute(monkeypatch)
    again = cached_features(images.copy(), masks.copy(), tmp_path, workers=1, progress=False)
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float64 and again.shape == (4, 13)


def test_arguments_are_forwarded_and_cache_dir_created(batch, tmp_path, fake_compute) -> None:
    images, masks = batch
    cache_dir = tmp_path / "nested" / "cache"
    cached_features(images, masks, cache_dir, workers=2, progress=False, ring_width=5)
    assert fake_compute == [{"count": 4, "workers": 2, "progress": False, "ring_width": 5}]
    assert cache_path(cache_dir, cache_key(images, masks, ring_width=5)).is_file()


def test_changed_content_is_a_miss(batch, tmp_path, fake_compute) -> None:
    images, masks = batch
    cached_features(images, masks, tmp_path, progress=False)
    changed_image = images.copy()
    changed_image[2, 5, 5] ^= 1
    cached_features(changed_image, masks, tmp_path, progress=False)
    changed_mask = masks.copy()
    changed_mask[1, 0, 0] = ~changed_mask[1, 0, 0]
    cached_features(images, changed_mask, tmp_path, progress=False)
    cached_features(images, masks, tmp_path, progress=False)  # the original again: a hit
    assert len(fake_compute) == 3
    assert len(list(tmp_path.glob("radiomics-*.npy"))) == 3


def test_key_covers_settings_version_shape_and_dtype(batch, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = batch
    base = cache_key(images, masks)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert cache_key(images.copy(), masks.copy()) == base
    assert cache_key(images, masks, ring_width=4) != base
    assert cache_key(images.astype(np.int16), masks) != base
    assert cache_key(images.reshape(4, 20, 80), masks.reshape(4, 20, 80)) != base
    assert cache_key(images[:3], masks[:3]) != base
    assert cache_key(list(images), list(masks)) == base  # a list of the same arrays is the same content

    monkeypatch.setattr(thyroid_radiomics, "FEATURE_VERSION", "changed")
    assert cache_key(images, masks) != base
    monkeypatch.undo()
    settings = dict(thyroid_radiomics.PYRADIOMICS_SETTINGS, binWidth=16)
    monkeypatch.setattr(thyroid_radiomics, "PYRADIOMICS_SETTINGS", settings)
    assert cache_key(images, masks) != base


def test_key_ignores_mask_encoding(batch) -> None:
    images, masks = batch
    base = cache_key(images, masks)
    assert cache_key(images, masks.astype(np.uint8)) == base
    assert cache_key(images, masks.astype(np.uint8) * 255) == base


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "wrong-shape", "wrong-dtype", "empty"],
)
def test_corrupt_file_is_recomputed_with_a_warning(batch, tmp_path, fake_compute, damage: str) -> None:
    images, masks = batch
    expected = cached_features(images, masks, tmp_path, progress=False)
    path = cache_path(tmp_path, cache_key(images, masks))
    if damage == "garbage":
        path.write_bytes(b"this is not an npy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong-shape":
        np.save(path, np.zeros((3, 13)))
    elif damage == "wrong-dtype":
        np.save(path, np.zeros((4, 13), dtype=np.float32))
    else:
        path.write_bytes(b"")

    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        result = cached_features(images, masks, tmp_path, progress=False)
    np.testing.assert_array_equal(result, expected)
    assert len(fake_compute) == 2
    np.testing.assert_array_equal(np.load(path), expected)  # rewritten
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_failed_write_leaves_neither_entry_nor_temporary_file(
    batch, tmp_path, fake_compute, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, masks = batch

    def failing_save(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cached_features(images, masks, tmp_path, progress=False)
    assert os.listdir(tmp_path) == []


def test_entry_replaces_an_existing_file_atomically(batch, tmp_path, fake_compute) -> None:
    """A stale file under the final name is replaced whole (os.replace), never appended to or truncated."""
    images, masks = batch
    path = cache_path(tmp_path, cache_key(images, masks))
    path.write_bytes(b"x" * 10_000)
    with pytest.warns(RuntimeWarning):
        result = cached_features(images, masks, tmp_path, progress=False)
    assert path.stat().st_size < 10_000
    np.testing.assert_array_equal(np.load(path), result)


def test_mismatched_lengths_raise(batch, tmp_path) -> None:
    images, masks = batch
    with pytest.raises(ValueError, match="4 images but 3 masks"):
        cached_features(images, masks[:3], tmp_path, progress=False)
