"""The MNIST idx reader on tiny fixture files, and the task built from them (``data.format=mnist``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtlbench.errors import DataError
from mtlbench.tasks.multidigits.composites import cached_composites
from mtlbench.tasks.multidigits.idx import load_mnist, mnist_files, read_idx
from mtlbench.tasks.multidigits.settings import MultiDigitsData
from mtlbench.tasks.multidigits.task import MultiDigitsParams, MultiDigitsTask

from .conftest import fake_mnist_digits, write_idx, write_mnist


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_plain_and_gzipped(tmp_path: Path, suffix: str) -> None:
    images, labels = fake_mnist_digits(12, seed=0)
    write_idx(tmp_path / f"x{suffix}", images)
    write_idx(tmp_path / f"y{suffix}", labels)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / f"f{suffix}", floats)
    np.testing.assert_array_equal(read_idx(tmp_path / f"x{suffix}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"y{suffix}"), labels)
    np.testing.assert_array_equal(read_idx(tmp_path / f"f{suffix}"), floats)  # big-endian on disk


def test_load_mnist_reads_the_four_files(mnist_root: Path, tmp_path: Path) -> None:
    train_x, train_y, test_x, _ = load_mnist(mnist_root)
    assert train_x.shape == (40, 28, 28) and test_x.shape == (20, 28, 28) and train_x.dtype == np.uint8
    np.testing.assert_array_equal(train_y, np.arange(40) % 10)
    gz = write_mnist(tmp_path / "gz", gz=True)
    assert all(p.suffix == ".gz" for p in mnist_files(gz).values())
    np.testing.assert_array_equal(load_mnist(gz)[2], test_x)


def test_a_wrong_magic_number_names_the_file(tmp_path: Path) -> None:
    root = write_mnist(tmp_path / "m")
    bad = root / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + bad.read_bytes()[4:])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is not an idx file.*0x12340801"):
        load_mnist(root)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flatten(path: Path) -> None:
    write_idx(path, read_idx(path).reshape(-1))  # a valid idx file, but 1-D


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, r"train-images-idx3-ubyte: idx header announces shape \(40, 28, 28\)"),
        (_empty, r"train-images-idx3-ubyte is not an idx file"),
        (_flatten, r"train-images-idx3-ubyte: expected unsigned-byte images N×H×W"),
    ],
    ids=["truncated", "empty", "one-dimensional"],
)
def test_damaged_image_files_name_the_file(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    root = write_mnist(tmp_path / "m")
    damage(root / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match=message):
        load_mnist(root)


def test_bad_gzip_labels_out_of_range_and_missing_files(tmp_path: Path) -> None:
    root = write_mnist(tmp_path / "gz", gz=True)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(root)
    root = write_mnist(tmp_path / "range")
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels must be digits 0-9, found 12"):
        load_mnist(root)
    root = write_mnist(tmp_path / "count")
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="holds 20 images but .*t10k-labels-idx1-ubyte 19 labels"):
        load_mnist(root)
    (root / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="no MNIST file t10k-images-idx3-ubyte"):
        load_mnist(root)


def test_the_task_builds_the_same_composites_from_mnist_files(mnist_root: Path, tmp_path: Path) -> None:
    data = MultiDigitsData(format="mnist", root=str(mnist_root), num_train=30, num_val=10, num_test=10)
    task = MultiDigitsTask(MultiDigitsParams(), data, seed=0, cache_dir=tmp_path)
    task.check_data()
    splits = task.prepare(progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    sample = splits.train[0]
    assert sample["image"].shape == (1, 32, 32) and sample["map"].shape == (32, 32)
    composites, info = cached_composites(data, tmp_path)
    assert info["composites_cache_status"] == "read"
    # validation is carved out of the 40 training digits (20 %, per class); test is exactly t10k
    np.testing.assert_array_equal(composites["test"].pool, np.arange(40, 60))
    assert len(composites["val"].pool) == 10 and composites["val"].pool.max() < 40
    assert not set(composites["val"].pool.tolist()) & set(composites["train"].pool.tolist())
    _, train_y, _, test_y = load_mnist(mnist_root)
    labels = np.concatenate([train_y, test_y])
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(composites[split].left, labels[composites[split].sources[:, 0]])
    # the fixture's digits are bars at label-dependent heights: ink is there, background is not
    assert np.all(composites["test"].maps[composites["test"].images == 0] == 0)
    assert (composites["train"].maps > 0).mean() > 0.05
