"""A preprocessing cache: every sample resized once, letterboxed to a square, stored memory-mapped.

Real ultrasound frames are large and not square (ThyroidXL about 532×727, AIMI 802×1054). Decoding a PNG or
an HDF5 row and resizing it on every epoch costs more than the model step at 256 px, so
:func:`build_cache` does it once:

* **Resize with the aspect ratio kept**: the longer side becomes ``size`` (``scale = size / max(H, W)``),
  the shorter one ``round(side * scale)``. Images are resampled bilinearly (Pillow, which widens the filter
  when shrinking, so it also anti-aliases); masks by nearest neighbour with pixel-centre alignment (output
  pixel ``i`` takes source pixel ``floor((i + 0.5) * H / h)``), so they stay binary.
* **Letterbox**: the resized sample is centred in a ``size × size`` square of zeros; the top and left pad
  offsets and the scale are recorded per sample, so :func:`restore_geometry` can map a predicted mask back
  to the original pixels (HD95 is reported in original pixels).

Layout of one cache (``<cache_dir>/preprocess-<size>px-<first 16 hex digits of the key>/``)::

    images.npy   (N, size, size) uint8   numpy .npy, opened with mmap_mode="r"
    masks.npy    (N, size, size) uint8   values {0, 1}
    meta.json    format, version, key, size, count, reader, root, and per sample: sample_ids,
                 original_sizes (H, W), scales, pads (top, left)

The key is the SHA-256 of the reader's name, its root folder, every record's ``sample_id`` and ``size``
(in order), the size and modification time of each record's image and mask file (so a file edited in
place gives a new cache), ``size`` and :data:`PREPROCESS_VERSION`. Under the reader's ``skip_invalid``
a sample that fails to decode is recorded in ``meta.json`` (``invalid``: row → file, message, reason)
and left zero in the arrays; the task leaves those rows out of every split. A cache is built in a
temporary sibling folder and renamed into place only when complete, so an interrupted build never leaves
a half cache under the final name (a killed build can leave a ``.preprocess-*.tmp`` folder, which
nothing reads and which may be deleted). A complete cache with the same key is reused without reading
any sample; a cache folder that fails validation is reported with a ``RuntimeWarning`` naming the bad
file, removed and rebuilt.

The work runs in a ``spawn`` process pool (as :func:`~.radiomics.compute_features_batch`): each worker
loads its samples through the reader and writes them straight into the memory-mapped arrays, so no pixel
data travels between processes. A script calling :func:`build_cache` with ``workers > 1`` needs the usual
``if __name__ == "__main__":`` guard. The result does not depend on ``workers``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlbench.errors import DataError

if TYPE_CHECKING:
    import torch

    from .readers import ThyroidReader, ThyroidRecord

__all__ = [
    "PREPROCESS_VERSION",
    "PreprocessedCache",
    "build_cache",
    "cache_key",
    "letterbox",
    "letterbox_geometry",
    "restore_geometry",
]

#: Bump whenever the resize or padding rule changes what a cached pixel holds: it is part of the key.
PREPROCESS_VERSION = "2"

_FORMAT = "mtlbench.tasks.thyroid.preprocess/1"
_META = "meta.json"
_IMAGES = "images.npy"
_MASKS = "masks.npy"


# ------------------------------------------------------------------------------------------------ geometry
def _resized_shape(height: int, width: int, scale: float, size: int) -> tuple[int, int]:
    """The (h, w) a (height, width) sample takes at ``scale``, at least 1 and at most ``size`` px."""
    return (
        min(size, max(1, round(height * scale))),
        min(size, max(1, round(width * scale))),
    )


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """``(scale, (h, w), (pad_top, pad_left))`` placing a (height, width) sample in a size×size square.

    ``scale = size / max(height, width)``; the resized sample is centred, the odd pixel of padding (if any)
    going to the bottom or the right.
    """
    if height < 1 or width < 1:
        raise ValueError(f"a sample must be at least 1×1 px, got {height}×{width}")
    if size < 1:
        raise ValueError(f"Parameter `size` should be a positive integer. Found `size = {size!r}`.")
    scale = size / max(height, width)
    h, w = _resized_shape(height, width, scale, size)
    return scale, (h, w), ((size - h) // 2, (size - w) // 2)


def _nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index of each of ``target`` output pixels, pixel centres aligned (``floor((i+0.5)·s/t)``)."""
    return np.minimum(((np.arange(target) + 0.5) * (source / target)).astype(np.int64), source - 1)


def letterbox(
    image: np.ndarray, mask: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
    """One sample resized (aspect kept) and zero-padded to size×size: ``(image, mask, scale, pad)``.

    ``image`` is uint8 (H, W), resampled bilinearly; ``mask`` (H, W) is resampled by nearest neighbour and
    returned as uint8 {0, 1}. ``pad`` is (top, left).
    """
    from PIL import Image

    height, width = image.shape
    scale, (h, w), (top, left) = letterbox_geometry(height, width, size)
    out_image = np.zeros((size, size), dtype=np.uint8)
    out_mask = np.zeros((size, size), dtype=np.uint8)
    if (h, w) == (height, width):
        resized = image
    else:
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    out_image[top : top + h, left : left + w] = resized
    rows, cols = _nearest_indices(height, h), _nearest_indices(width, w)
    out_mask[top : top + h, left : left + w] = mask[rows[:, None], cols[None, :]] != 0
    return out_image, out_mask, scale, (top, left)


def restore_geometry(
    mask: np.ndarray | torch.Tensor,
    original_hw: Sequence[int],
    scale: float,
    pad: Sequence[int],
) -> np.ndarray | torch.Tensor:
    """A size×size mask (or a stack ``(..., size, size)``) mapped back to the original (H, W) pixels.

    Undoes :func:`letterbox`: crops the padding (``pad`` = top, left) and resizes by nearest neighbour
    (pixel-centre aligned) to ``original_hw``. Works on numpy arrays and torch tensors of any dtype and
    returns the same type and dtype. Round trip: when the cache shrank the sample (``scale < 1``), each
    restored pixel copies an original pixel at most ``ceil(1/(2·scale) - 1/2)`` px away along each axis,
    i.e. within 1 px of the original boundary whenever ``scale >= 1/3`` (ThyroidXL at 256 or 512 px,
    AIMI at 512 px) and within 2 px for AIMI at 256 px; when the cache enlarged it, the round trip is
    exact.
    """
    height, width = (int(v) for v in original_hw)
    size = mask.shape[-1]
    if mask.ndim < 2 or mask.shape[-2] != size:
        raise ValueError(f"mask must be (..., size, size), got shape {tuple(mask.shape)}")
    h, w = _resized_shape(height, width, float(scale), size)
    top, left = (int(v) for v in pad)
    if top < 0 or left < 0 or top + h > size or left + w > size:
        raise ValueError(
            f"pad {tuple(pad)} with a resized area of {h}×{w} does not fit in a {size}×{size} mask"
        )
    rows = top + _nearest_indices(h, height)
    cols = left + _nearest_indices(w, width)
    if isinstance(mask, np.ndarray):
        return mask[..., rows[:, None], cols[None, :]]
    import torch

    index_rows = torch.from_numpy(rows).to(mask.device)
    index_cols = torch.from_numpy(cols).to(mask.device)
    return mask.index_select(-2, index_rows).index_select(-1, index_cols)


# ------------------------------------------------------------------------------------------------ the cache
@dataclass(eq=False)
class PreprocessedCache:
    """A built cache: its folder, its per-sample geometry, and the arrays, mapped on first use.

    ``images`` and ``masks`` are read-only ``numpy.memmap`` arrays (N, size, size) uint8, opened lazily and
    once per process: pickling (a DataLoader worker's copy of a dataset) carries the folder and the small
    per-sample metadata, never the pixels, and the copy maps the files itself on first access.
    """

    path: Path
    size: int
    key: str
    sample_ids: tuple[str, ...]
    original_sizes: np.ndarray  # (N, 2) int64, (H, W)
    scales: np.ndarray  # (N,) float64
    pads: np.ndarray  # (N, 2) int64, (top, left)
    #: rows whose sample failed to decode under ``skip_invalid``: row → (file, message, reason)
    invalid: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    _arrays: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    _pid: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | Path) -> PreprocessedCache:
        """Open and validate a cache folder; ``DataError`` naming the file when it is missing or malformed."""
        path = Path(path)
        meta_path = path / _META
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: missing metadata of a preprocessing cache (rebuild it)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            count, size = int(meta["count"]), int(meta["size"])
            if meta["format"] != _FORMAT:
                raise ValueError(f"format {meta['format']!r}, expected {_FORMAT!r}")
            cache = cls(
                path=path,
                size=size,
                key=str(meta["key"]),
                sample_ids=tuple(str(s) for s in meta["sample_ids"]),
                original_sizes=np.asarray(meta["original_sizes"], dtype=np.int64).reshape(-1, 2),
                scales=np.asarray(meta["scales"], dtype=np.float64).reshape(-1),
                pads=np.asarray(meta["pads"], dtype=np.int64).reshape(-1, 2),
                invalid={int(k): tuple(v) for k, v in meta.get("invalid", {}).items()},
            )
            lengths = {len(cache.sample_ids), len(cache.original_sizes), len(cache.scales), len(cache.pads)}
            if lengths != {count}:
                raise ValueError(f"per-sample lists have lengths {sorted(lengths)}, expected {count}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{meta_path}: malformed preprocessing-cache metadata ({exc})") from exc
        cache._map()  # validates both arrays now rather than in a DataLoader worker
        return cache

    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            expected = (len(self.sample_ids), self.size, self.size)
            arrays = []
            for name in (_IMAGES, _MASKS):
                file = self.path / name
                if not file.is_file():
                    raise DataError(f"{file}: missing array of a preprocessing cache (rebuild it)")
                try:
                    array = np.load(file, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError, EOFError) as exc:
                    raise DataError(f"{file}: unreadable cache array ({exc}); rebuild the cache") from exc
                if array.shape != expected or array.dtype != np.uint8:
                    raise DataError(
                        f"{file}: holds {array.dtype} {array.shape}, expected uint8 {expected}; "
                        "rebuild the cache"
                    )
                arrays.append(array)
            self._arrays = (arrays[0], arrays[1])
            self._pid = os.getpid()
        return self._arrays

    @property
    def images(self) -> np.ndarray:
        """(N, size, size) uint8, read-only memory map."""
        return self._map()[0]

    @property
    def masks(self) -> np.ndarray:
        """(N, size, size) uint8 {0, 1}, read-only memory map."""
        return self._map()[1]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_pid"] = None
        return state

    def geometry(self, row: int) -> tuple[tuple[int, int], float, tuple[int, int]]:
        """``(original (H, W), scale, pad (top, left))`` of cache row ``row``."""
        h, w = self.original_sizes[row]
        top, left = self.pads[row]
        return (int(h), int(w)), float(self.scales[row]), (int(top), int(left))

    def restore(self, row: int, mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """:func:`restore_geometry` with the geometry of cache row ``row``."""
        original_hw, scale, pad = self.geometry(row)
        return restore_geometry(mask, original_hw, scale, pad)


# ------------------------------------------------------------------------------------------------ building
def cache_key(reader: ThyroidReader, records: Sequence[ThyroidRecord], size: int) -> str:
    """The hexadecimal SHA-256 identifying a cache (see the module docstring for what goes in)."""
    root = getattr(reader, "root", "")
    with contextlib.suppress(OSError, TypeError):
        root = Path(root).resolve()
    header = {
        "format": _FORMAT,
        "version": PREPROCESS_VERSION,
        "reader": str(getattr(reader, "name", type(reader).__name__)),
        "root": str(root),
        "size": int(size),
        "count": len(records),
    }
    hasher = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    stats: dict[str, list[int] | None] = {}
    for record in records:
        item = [record.sample_id, list(record.size) if record.size is not None else None]
        # The files' size and modification time (one stat each; a container such as AIMI's HDF5 once):
        # a mask edited in place gives another key, so the cache is never served stale.
        for path in (record.image, record.mask):
            if path is not None and path not in stats:
                stats[path] = _file_stamp(path)
            item.append(stats.get(path) if path is not None else None)
        hasher.update(json.dumps(item).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


def _file_stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _folder_name(size: int, key: str) -> str:
    return f"preprocess-{size}px-{key[:16]}"


class _Writer:
    """Loads samples through a reader and writes them into the cache's arrays (one per process)."""

    def __init__(
        self, reader: ThyroidReader, records: Sequence[ThyroidRecord], folder: Path, size: int
    ) -> None:
        self.reader = reader
        self.records = records
        self.size = size
        self.images = np.load(folder / _IMAGES, mmap_mode="r+")
        self.masks = np.load(folder / _MASKS, mmap_mode="r+")

    def write(self, start: int, stop: int) -> list[Any]:
        """Rows ``start:stop``; returns (H, W, scale, pad_top, pad_left) per row, or
        ``("invalid", file, message, reason)`` for a sample that failed to decode under ``skip_invalid``."""
        out: list[Any] = []
        for row in range(start, stop):
            record = self.records[row]
            try:
                image, mask = self.reader.load(record)
                image, mask = np.asarray(image), np.asarray(mask)
                if image.ndim != 2 or image.dtype != np.uint8 or mask.shape != image.shape:
                    raise DataError(
                        f"{record.image}: sample {record.sample_id!r} loaded as image {image.dtype} "
                        f"{image.shape} and mask {mask.shape}; expected uint8 (H, W) and a mask of the "
                        "same size"
                    )
            except DataError as exc:
                if not getattr(self.reader, "skip_invalid", False):
                    raise
                file = getattr(exc, "file", record.image)
                message = getattr(exc, "message", str(exc))
                out.append(("invalid", str(file), message, getattr(exc, "reason", "unreadable_sample")))
                continue
            self.images[row], self.masks[row], scale, (top, left) = letterbox(image, mask, self.size)
            out.append((image.shape[0], image.shape[1], scale, top, left))
        self.images.flush()
        self.masks.flush()
        return out


_WORKER: _Writer | None = None


def _init_worker(reader: Any, records: Any, folder: Path, size: int) -> None:
    global _WORKER
    _WORKER = _Writer(reader, records, folder, size)


def _write_chunk(start: int, stop: int) -> list[tuple[int, int, float, int, int]]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.write(start, stop)


def _progress(enabled: bool, total: int) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    from mtlbench.progress import counting_bar

    return counting_bar("preprocess", enabled, total)


def _fill(
    reader: ThyroidReader,
    records: Sequence[ThyroidRecord],
    folder: Path,
    size: int,
    workers: int,
    progress: bool,
) -> list[tuple[int, int, float, int, int]]:
    n = len(records)
    chunk = max(1, min(16, math.ceil(n / (4 * workers))))
    bounds = [(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    workers = min(workers, len(bounds))
    geometry: list[Any] = [None] * n
    with _progress(progress, n) as advance:
        if workers == 1:
            writer = _Writer(reader, records, folder, size)
            for a, b in bounds:
                geometry[a:b] = writer.write(a, b)
                advance(b - a)
            return geometry
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(reader, list(records), folder, size),
        ) as pool:
            pending: dict[Future[list[Any]], tuple[int, int]] = {
                pool.submit(_write_chunk, a, b): (a, b) for a, b in bounds
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        a, b = pending.pop(future)
                        geometry[a:b] = future.result()
                        advance(b - a)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return geometry


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def build_cache(
    reader: ThyroidReader,
    records: Sequence[ThyroidRecord],
    size: int,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessedCache:
    """The cache of ``records`` at ``size`` px under ``cache_dir``: reused when complete, else built.

    ``reader.load(record)`` must give uint8 (H, W) images and (H, W) masks; a sample it cannot read raises
    (filter with ``check_dataset`` / ``load_or_skip`` first) and nothing is left under the cache's name.
    Row ``i`` of the cache is ``records[i]``. ``workers=None`` uses ``os.cpu_count()`` processes,
    ``workers=1`` this process; ``progress`` shows a rich progress bar on stderr.
    """
    records = list(records)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"Parameter `size` should be a positive integer. Found `size = {size!r}`.")
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(
            f"Parameter `workers` should be a positive integer or None. Found `workers = {workers!r}`."
        )
    if not records:
        raise ValueError("cannot build a preprocessing cache of zero records")
    size = int(size)
    key = cache_key(reader, records, size)
    cache_dir = Path(cache_dir)
    final = cache_dir / _folder_name(size, key)
    if final.exists():
        try:
            cache = PreprocessedCache.open(final)
            if cache.key != key or cache.size != size or len(cache) != len(records):
                raise DataError(f"{final / _META}: describes another cache (key {cache.key[:16]})")
            return cache
        except DataError as exc:
            warnings.warn(
                f"preprocessing cache is broken ({exc}); rebuilding it", RuntimeWarning, stacklevel=2
            )
            _discard(final, cache_dir)

    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
    try:
        os.chmod(temporary, 0o755)  # mkdtemp makes it owner-only; a cache is meant to be shared
        shape = (len(records), size, size)
        for name in (_IMAGES, _MASKS):
            array = np.lib.format.open_memmap(temporary / name, mode="w+", dtype=np.uint8, shape=shape)
            del array  # zero-filled; the workers map the files themselves
        geometry = _fill(reader, records, temporary, size, int(workers), progress)
        invalid = {str(row): list(g[1:]) for row, g in enumerate(geometry) if g[0] == "invalid"}
        geometry = [(size, size, 1.0, 0, 0) if g[0] == "invalid" else g for g in geometry]
        meta = {
            "format": _FORMAT,
            "version": PREPROCESS_VERSION,
            "key": key,
            "size": size,
            "count": len(records),
            "reader": str(getattr(reader, "name", type(reader).__name__)),
            "root": str(getattr(reader, "root", "")),
            "sample_ids": [r.sample_id for r in records],
            "original_sizes": [[g[0], g[1]] for g in geometry],
            "scales": [g[2] for g in geometry],
            "pads": [[g[3], g[4]] for g in geometry],
            "invalid": invalid,
        }
        with open(temporary / _META, "w", encoding="utf-8") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for name in (_IMAGES, _MASKS):
            with open(temporary / name, "rb+") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(temporary, final)
        except OSError:
            if not final.exists():
                raise
            # Another process finished the same cache first: theirs is identical, keep it.
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            _fsync(cache_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return PreprocessedCache.open(final)


def _discard(folder: Path, cache_dir: Path) -> None:
    """Move a broken cache out of the way (atomically), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".broken", dir=cache_dir))
    os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)
