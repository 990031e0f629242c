"""Shared fixtures of the multidigits tests: small composites built once per module."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mtlbench.tasks.multidigits.settings import MultiDigitsData

SMALL = {"num_train": 60, "num_val": 20, "num_test": 20}


def small_data(**overrides: object) -> MultiDigitsData:
    return MultiDigitsData(**{**SMALL, **overrides})  # type: ignore[arg-type]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file written from its definition (magic 0x0000TTDD, big-endian int32 dims, C-order bytes)."""
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    blob = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def fake_mnist_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 byte "digits" (a bright bar whose position encodes the label) and their labels."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = 4 + 2 * int(label)
        images[i, top : top + 3, 6:22] = rng.integers(128, 256, (3, 16))
    return images, labels


def write_mnist(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = fake_mnist_digits(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"))
