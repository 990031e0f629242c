"""The composites: disjoint source splits, determinism, the cache, labels and the ownership map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from mtlbench.errors import DataError
from mtlbench.tasks.multidigits import composites as comp
from mtlbench.tasks.multidigits.composites import SPLITS, cached_composites, split_sources

from .conftest import small_data


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_digits()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data = small_data()
    cache = tmp_path_factory.mktemp("cache")
    first, info = cached_composites(data, cache)
    return data, cache, first, info


def test_second_call_reads_the_cache_and_gives_the_same_arrays(built, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, cache, first, info = built
    assert info["composites_cache_status"] == "built"
    assert (cache / "multidigits").is_dir() and info["composites_cache"].endswith(".npz")

    def no_rebuild(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the composites were built again instead of read from the cache")

    monkeypatch.setattr(comp, "build_composites", no_rebuild)
    again, info2 = cached_composites(data, cache)
    assert info2["composites_cache_status"] == "read" and info2["composites_key"] == info["composites_key"]
    monkeypatch.undo()
    fresh, _ = cached_composites(data, tmp_path)  # built from scratch elsewhere: the same, bit for bit
    for split in SPLITS:
        for name in ("images", "maps", "left", "right", "sources", "positions", "pool"):
            np.testing.assert_array_equal(getattr(again[split], name), getattr(first[split], name))
            np.testing.assert_array_equal(getattr(fresh[split], name), getattr(first[split], name))
    assert not list((cache / "multidigits").glob(".*.tmp")), "a temporary file was left behind"


def test_settings_change_the_key_but_not_the_other_splits(built, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, _, first, info = built
    more, info_more = cached_composites(small_data(num_train=80), tmp_path)
    assert info_more["composites_key"] != info["composites_key"]
    # each split has its own generator: more training composites leave validation and test alone
    for split in ("val", "test"):
        np.testing.assert_array_equal(more[split].images, first[split].images)
    assert len(more["train"]) == 80


def test_splits_are_built_from_disjoint_source_digits(built, digits) -> None:  # type: ignore[no-untyped-def]
    _, _, c, info = built
    pools = [set(c[s].pool.tolist()) for s in SPLITS]
    assert all(not (a & b) for i, a in enumerate(pools) for b in pools[i + 1 :])
    assert set.union(*pools) == set(range(len(digits.target)))  # every source digit in exactly one pool
    for split in SPLITS:
        used = set(c[split].sources.ravel().tolist())
        assert used <= pools[SPLITS.index(split)], split
        assert np.all(c[split].sources[:, 0] != c[split].sources[:, 1])  # two different source digits
    # stratified: every class in every pool, 20 % to validation and to test
    for split, share in (("val", 0.2), ("test", 0.2)):
        counts = np.bincount(digits.target[c[split].pool], minlength=10)
        assert counts.min() > 0
        assert len(c[split].pool) == pytest.approx(share * len(digits.target), rel=0.03)
    assert info["source_digits"] == {s: len(c[s].pool) for s in SPLITS}


def test_labels_are_the_source_digits_classes(built, digits) -> None:  # type: ignore[no-untyped-def]
    _, _, c, _ = built
    for split in SPLITS:
        np.testing.assert_array_equal(c[split].left, digits.target[c[split].sources[:, 0]])
        np.testing.assert_array_equal(c[split].right, digits.target[c[split].sources[:, 1]])


def test_images_and_ownership_maps_follow_their_definition(built, digits) -> None:  # type: ignore[no-untyped-def]
    data, _, c, _ = built
    size, canvas, offset = data.digit_size, data.canvas_size, data.max_offset
    for split in SPLITS:
        s = c[split]
        a, b, r, q = s.positions.T
        assert a.min() >= 0 and b.min() >= 0 and max(a.max(), b.max()) <= offset  # upper-left corner
        far = canvas - size
        assert r.max() <= far and q.max() <= far and min(r.min(), q.min()) >= far - offset
        # independent re-rendering: torch's bilinear upscaling of the 8×8 source, placed by hand
        src = torch.from_numpy(digits.images[s.sources.ravel()] / 16.0).float()[:, None]
        up = F.interpolate(src, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
        up = up.reshape(len(s), 2, size, size)
        for i in range(len(s)):
            left = np.zeros((canvas, canvas), np.float32)
            right = np.zeros_like(left)
            left[a[i] : a[i] + size, b[i] : b[i] + size] = up[i, 0]
            right[r[i] : r[i] + size, q[i] : q[i] + size] = up[i, 1]
            np.testing.assert_allclose(s.images[i], np.maximum(left, right), atol=1e-6)
            ink = np.maximum(left, right) >= data.ink_threshold
            expected = np.where(ink, np.where(left >= right, 1, 2), 0)
            tie_free = np.abs(left - right) > 1e-5  # away from float ties the rule is unambiguous
            np.testing.assert_array_equal(s.maps[i][tie_free | ~ink], expected[tie_free | ~ink])
        # consistency with the image alone: background wherever the image is 0, ink at or above the
        # threshold exactly where the map is not background; the digits overlap in every composite
        assert np.all(s.maps[s.images == 0] == 0)
        assert np.array_equal(s.maps > 0, s.images >= data.ink_threshold)
        assert s.images.min() == 0.0 and s.images.max() <= 1.0
        assert np.all(((s.maps == 1).any(axis=(1, 2))) & ((s.maps == 2).any(axis=(1, 2))))


def test_resize_keeps_blank_pixels_blank() -> None:
    blank_corner = np.zeros((1, 8, 8), np.float32)
    blank_corner[0, 4:, 4:] = 1.0
    up = comp.resize_digits(blank_corner, 20)
    assert up.shape == (1, 20, 20) and up[0, :8, :8].max() == 0.0 and up.max() == pytest.approx(1.0)
    down = comp.resize_digits(np.ones((2, 28, 28), np.float32), 20)
    np.testing.assert_allclose(down, 1.0, atol=1e-6)


def test_folds_partition_the_training_and_validation_digits(digits) -> None:  # type: ignore[no-untyped-def]
    labels = digits.target
    plain = split_sources(labels, 0.2, 0.2, seed=0)
    pool = set(plain["train"].tolist()) | set(plain["val"].tolist())
    folds = [split_sources(labels, 0.2, 0.2, seed=0, folds=3, fold=k, fold_seed=5) for k in range(3)]
    vals = [set(f["val"].tolist()) for f in folds]
    assert set.union(*vals) == pool and sum(len(v) for v in vals) == len(pool)
    for f, val in zip(folds, vals):
        np.testing.assert_array_equal(f["test"], plain["test"])  # the test pool never moves
        assert set(f["train"].tolist()) == pool - val
    again = split_sources(labels, 0.2, 0.2, seed=0, folds=3, fold=1, fold_seed=5)
    np.testing.assert_array_equal(again["val"], folds[1]["val"])


def test_a_damaged_cache_file_is_rebuilt(built, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, _, first, info = built
    path = tmp_path / "multidigits" / f"composites-{info['composites_key']}.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not a complete zip")
    again, info2 = cached_composites(data, tmp_path)
    assert info2["composites_cache_status"] == "built"
    np.testing.assert_array_equal(again["val"].images, first["val"].images)


def test_a_split_without_two_source_digits_is_a_data_error(mnist_root, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = small_data(format="mnist", root=str(mnist_root), val_fraction=0.01)  # 4 per class → 0 to val
    message = r"the val split has 0 source digit\(s\) of 60 .*data.val_fraction=0.01"
    with pytest.raises(DataError, match=message):
        cached_composites(data, tmp_path)
