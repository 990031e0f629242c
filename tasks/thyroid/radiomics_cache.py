"""On-disk cache of the radiomics targets, keyed by content.

The key is the SHA-256 of: a format tag, :data:`~.radiomics.FEATURE_VERSION`, the extraction settings
(:func:`~.radiomics.extraction_settings`, which include the pyradiomics settings and the edge ring width),
the installed pyradiomics version, the number of samples, and for every image and mask its shape, dtype and
bytes. Masks are hashed as boolean arrays, because only ``mask != 0`` reaches the features: a ``{0, 1}``
uint8 mask and a ``{0, 255}`` one share their cache entry. The array is stored as
``<cache_dir>/radiomics-<first 16 hex digits of the key>.npy``, written atomically (temporary file in the same
folder, fsync, ``os.replace``), so a reader never sees a half-written file and concurrent writers of the same
entry are harmless. A file that cannot be read, or holds the wrong shape or dtype, is recomputed and rewritten
with a warning naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from . import radiomics as thyroid_radiomics

__all__ = ["cache_key", "cache_path", "cached_features"]

_KEY_FORMAT = b"mtlbench.tasks.thyroid.radiomics_cache/1"


def _pyradiomics_version() -> str:
    for distribution in ("pyradiomics-bhklab", "pyradiomics"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{distribution}=={metadata.version(distribution)}"
    return "pyradiomics-not-installed"


def _hash_array(hasher: hashlib._Hash, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    hasher.update(json.dumps([list(array.shape), array.dtype.str]).encode())
    hasher.update(memoryview(array).cast("B"))


def cache_key(
    images: thyroid_radiomics.ArrayBatch,
    masks: thyroid_radiomics.ArrayBatch,
    ring_width: int = thyroid_radiomics.EDGE_RING_WIDTH,
) -> str:
    """The full hexadecimal SHA-256 content key of a batch (see the module docstring for what goes in)."""
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    hasher = hashlib.sha256(_KEY_FORMAT)
    header = {
        "feature_version": thyroid_radiomics.FEATURE_VERSION,
        "settings": thyroid_radiomics.extraction_settings(ring_width),
        "pyradiomics": _pyradiomics_version(),
        "count": len(images),
    }
    hasher.update(json.dumps(header, sort_keys=True).encode())
    for image, mask in zip(images, masks, strict=True):
        _hash_array(hasher, np.asarray(image))
        _hash_array(hasher, np.asarray(mask) != 0)
    return hasher.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """Where the entry with content key ``key`` lives."""
    return Path(cache_dir) / f"radiomics-{key[:16]}.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; a cache is meant to be shared
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # Make the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _load(path: Path, count: int) -> np.ndarray:
    """The stored features, or ``ValueError``/``OSError`` when the file is not a valid entry for ``count``."""
    array = np.load(path, allow_pickle=False)
    expected = (count, len(thyroid_radiomics.FEATURE_NAMES))
    if not isinstance(array, np.ndarray) or array.shape != expected or array.dtype != np.float64:
        raise ValueError(
            f"holds {getattr(array, 'dtype', type(array))} {getattr(array, 'shape', '')}, "
            f"expected float64 {expected}"
        )
    return array


def cached_features(
    images: thyroid_radiomics.ArrayBatch,
    masks: thyroid_radiomics.ArrayBatch,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
    *,
    ring_width: int = thyroid_radiomics.EDGE_RING_WIDTH,
) -> np.ndarray:
    """:func:`~.radiomics.compute_features_batch` through the content-keyed cache in ``cache_dir``.

    Returns the (N, 13) float64 features, loaded from ``<cache_dir>/radiomics-<key16>.npy`` when an entry
    for exactly this content and these settings exists, otherwise computed (``workers`` and ``progress`` as
    in :func:`~.radiomics.compute_features_batch`) and stored. ``cache_dir`` is created if missing. A cache
    file that cannot be loaded is reported with a ``RuntimeWarning`` naming it, then recomputed and
    rewritten.
    """
    count = thyroid_radiomics._batch_length(images, masks)
    path = cache_path(cache_dir, cache_key(images, masks, ring_width))
    if path.exists():
        try:
            return _load(path, count)
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(
                f"radiomics cache file {path} is unreadable or malformed ({err}); recomputing it",
                RuntimeWarning,
                stacklevel=2,
            )
    features = thyroid_radiomics.compute_features_batch(
        images, masks, workers=workers, progress=progress, ring_width=ring_width
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(path, np.ascontiguousarray(features, dtype=np.float64))
    return features
