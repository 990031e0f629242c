"""A small reader for the idx files MNIST ships (LeCun et al.), plain or gzipped.

An idx file is a 4-byte magic number — two zero bytes, a type code, the number of dimensions —
then one big-endian int32 per dimension, then the values in C order (big-endian for multi-byte
types). MNIST's images are ``0x00000803`` (unsigned bytes, N × 28 × 28) and its labels
``0x00000801`` (unsigned bytes, N). Every check names the file it failed on.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mtlbench.errors import DataError

#: idx type code → numpy dtype (big-endian).
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: role → the file's name as distributed (``.gz`` optional; ``.idx3-ubyte`` spellings accepted too).
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an idx file (native byte order); raises DataError naming the file."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(
            f"{path} is not an idx file: its magic number is 0x{raw[:4].hex() or 'empty'} "
            "(expected 0x0000TTDD: two zero bytes, a type code among "
            f"{', '.join(f'0x{t:02x}' for t in IDX_TYPES)}, the number of dimensions)"
        )
    dtype = np.dtype(IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(
            f"{path}: idx header announces {ndim} dimension(s) but the file ends at byte {len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: idx header announces shape {dims} of {dtype.name} ({expected} bytes with the header), "
            f"but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def mnist_files(root: Path) -> dict[str, Path]:
    """The path of each of the four MNIST files under ``root``; DataError naming a missing one."""
    found = {}
    for role, name in MNIST_FILES.items():
        dotted = name.replace("-idx", ".idx")
        candidates = [root / n for base in (name, dotted) for n in (base, f"{base}.gz")]
        present = [p for p in candidates if p.is_file()]
        if not present:
            raise DataError(
                f"data.root {str(root)!r} has no MNIST file {name} (nor {name}.gz): "
                f"data.format='mnist' needs {', '.join(MNIST_FILES.values())}"
            )
        found[role] = present[0]
    return found


def _checked_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected unsigned-byte images N×H×W (magic 0x00000803), "
            f"found {images.dtype.name} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path}: expected unsigned-byte labels N (magic 0x00000801), "
            f"found {labels.dtype.name} of shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be digits 0-9, found {int(labels.max())}")
    return images, labels


def load_mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training images and labels, then test images and labels, checked for shape and range."""
    files = mnist_files(root)
    train_x, train_y = _checked_pair(files["train_images"], files["train_labels"])
    test_x, test_y = _checked_pair(files["test_images"], files["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{files['test_images']}: images of {test_x.shape[1:]} pixels, but the training images "
            f"({files['train_images']}) have {train_x.shape[1:]}"
        )
    return train_x, train_y, test_x, test_y
