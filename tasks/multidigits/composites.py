"""Source digits, their disjoint split, and the two-digit composites: seeded, cached, pure numpy.

Conventions pinned here (the tests check each):

* Source digits have intensities in [0, 1] (scikit-learn's 0..16 counts / 16, MNIST's bytes / 255)
  and are resized to ``digit_size`` × ``digit_size`` with bilinear interpolation between pixel
  centres (``align_corners=False``), antialiased when shrinking (MNIST's 28 px): 8 → 20 px for
  scikit-learn's digits, so a pixel that no ink reaches stays exactly 0.
* Source digits are split into train / validation / test pools *per class* (stratified, seeded by
  ``data_seed``) before any compositing, so no source digit appears in two splits. With
  ``data.folds = k`` the train and validation pools are pooled and cut into k stratified folds
  (seeded by ``data.fold_seed``); fold ``data.fold`` is the validation pool; the test pool is fixed.
* A composite draws two distinct source digits of its split's pool (their classes may coincide):
  the left digit with its upper-left corner at ``(a, b)``, the right one with its upper-left corner
  at ``(S − D − c, S − D − d)``, for canvas ``S``, digit size ``D`` and ``a, b, c, d`` uniform in
  ``0..max_offset``. With the defaults (S = 32, D = 20, offsets ≤ 4) the digits are shifted by 4–12
  px against each other, 20–60 % of a digit, as in Sener & Koltun's MultiMNIST (28 px digits with
  offsets ≤ 4 on a 36 px canvas), so they always overlap.
* The image is the pixel-wise maximum of the two placed digits ``L`` and ``R``. The ownership map
  is 0 (background) where ``max(L, R) < ink_threshold``, else 1 (left) where ``L ≥ R`` and 2 (right)
  where ``R > L``: the brighter stroke owns the pixel, ties go to the left digit. Hence the image is
  0 only on background, equals ``L`` on left pixels and ``R`` (> ``L``) on right pixels.
* Every split has its own generator (``data_seed``, split), so the validation and test composites
  do not change when ``num_train`` does.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench import atomic
from mtlbench.errors import DataError

from .settings import MultiDigitsData

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
#: Bump when the composites' definition changes, so that old caches are not reused.
CACHE_VERSION = 1


@dataclass
class SourceDigits:
    """The digits composites are built from: ``images`` (N, h, w) float32 in [0, 1], ``labels`` (N,)."""

    images: np.ndarray
    labels: np.ndarray
    #: Indices that form the test pool as given by the data set (MNIST's t10k); ``None``: carved out.
    fixed_test: np.ndarray | None
    description: str


@dataclass
class Composites:
    """One split's composites and where each came from (indices into the source digits)."""

    images: np.ndarray  # (n, S, S) float32 in [0, 1]
    maps: np.ndarray  # (n, S, S) uint8: 0 background, 1 left, 2 right
    left: np.ndarray  # (n,) int64 class of the left digit
    right: np.ndarray  # (n,) int64 class of the right digit
    sources: np.ndarray  # (n, 2) int64: source index of the left and of the right digit
    positions: np.ndarray  # (n, 4) int64: upper-left (row, col) of the left, then of the right digit
    pool: np.ndarray  # the split's source indices (sorted)

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------- source digits
def load_sklearn_digits() -> SourceDigits:
    """scikit-learn's 1,797 8×8 handwritten digits (the UCI optdigits test set), scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise DataError(
            "data.format='digits' reads scikit-learn's digits: install it with `pip install scikit-learn`"
        ) from None
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).clip(0.0, 1.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return SourceDigits(images, labels, None, "sklearn.datasets.load_digits (1,797 8×8 digits)")


def load_source_digits(data: MultiDigitsData) -> SourceDigits:
    if data.format == "mnist":
        from .idx import load_mnist

        train_x, train_y, test_x, test_y = load_mnist(Path(str(data.root)))
        images = np.concatenate([train_x, test_x]).astype(np.float32) / 255.0
        labels = np.concatenate([train_y, test_y]).astype(np.int64)
        fixed_test = np.arange(len(train_y), len(labels))
        return SourceDigits(images, labels, fixed_test, f"MNIST idx files at {data.root}")
    return load_sklearn_digits()


def split_sources(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fixed_test: np.ndarray | None = None,
    folds: int | None = None,
    fold: int = 0,
    fold_seed: int = 0,
) -> dict[str, np.ndarray]:
    """Disjoint, per-class stratified pools of source indices: ``{"train", "val", "test"}``, sorted.

    Per class ``c`` with ``n_c`` digits outside ``fixed_test``, a seeded permutation gives
    ``round(test_fraction · n_c)`` digits to test (unless ``fixed_test`` names the test pool), then
    ``round(val_fraction · n_c)`` to validation and the rest to training. With ``folds``, the digits
    left after the test pool are dealt round-robin into ``folds`` folds after a permutation seeded by
    ``fold_seed``, and fold ``fold`` is validation.
    """
    rng = np.random.default_rng([seed, 7])
    fold_rng = np.random.default_rng([fold_seed, 11])
    test_mask = np.zeros(len(labels), dtype=bool)
    if fixed_test is not None:
        test_mask[fixed_test] = True
    pools: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for c in range(NUM_CLASSES):
        members = np.flatnonzero((labels == c) & ~test_mask)
        members = members[rng.permutation(len(members))]
        n_class = len(members)
        if fixed_test is None:
            n_test = round(test_fraction * n_class)
            pools["test"].append(members[:n_test])
            members = members[n_test:]
        if folds is None:
            n_val = round(val_fraction * n_class)
            pools["val"].append(members[:n_val])
            pools["train"].append(members[n_val:])
        else:
            members = members[fold_rng.permutation(len(members))]
            in_fold = np.arange(len(members)) % folds == fold
            pools["val"].append(members[in_fold])
            pools["train"].append(members[~in_fold])
    if fixed_test is not None:
        pools["test"].append(np.asarray(fixed_test, dtype=np.int64))
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) for name, parts in pools.items()}


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, h, w)`` → ``(N, size, size)`` float32, bilinear between pixel centres, antialiased when
    shrinking; zero where no source ink reaches."""
    import torch
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size):
        return images.astype(np.float32, copy=True)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy().clip(0.0, 1.0)


# --------------------------------------------------------------------------- composites
def draw_layout(
    pool: np.ndarray, n: int, canvas_size: int, digit_size: int, max_offset: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Source pairs ``(n, 2)`` (two distinct digits of ``pool``) and positions ``(n, 4)``."""
    first = rng.integers(0, len(pool), n)
    shift = rng.integers(1, len(pool), n)  # never 0: the right digit is another source digit
    sources = np.stack([pool[first], pool[(first + shift) % len(pool)]], axis=1)
    offsets = rng.integers(0, max_offset + 1, (n, 4))
    far = canvas_size - digit_size
    positions = np.concatenate([offsets[:, :2], far - offsets[:, 2:]], axis=1)
    return sources.astype(np.int64), positions.astype(np.int64)


def ownership_map(left: np.ndarray, right: np.ndarray, ink_threshold: float) -> np.ndarray:
    """0 where ``max(left, right) < ink_threshold``, else 1 where ``left ≥ right``, else 2 (uint8)."""
    owner = np.where(left >= right, 1, 2).astype(np.uint8)
    owner[np.maximum(left, right) < ink_threshold] = 0
    return owner


def render(
    digits: np.ndarray, sources: np.ndarray, positions: np.ndarray, canvas_size: int, ink_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Images and ownership maps of composites; ``digits[sources]`` are the resized source digits."""
    n, size = len(sources), digits.shape[-1]
    left = np.zeros((n, canvas_size, canvas_size), dtype=np.float32)
    right = np.zeros_like(left)
    for i, ((a, b, c, d), (s_left, s_right)) in enumerate(zip(positions, sources)):
        left[i, a : a + size, b : b + size] = digits[s_left]
        right[i, c : c + size, d : d + size] = digits[s_right]
    return np.maximum(left, right), ownership_map(left, right, ink_threshold)


def build_composites(data: MultiDigitsData, source: SourceDigits) -> dict[str, Composites]:
    """Every split's composites (an empty test split when ``num_test`` is 0)."""
    pools = split_sources(
        source.labels,
        data.val_fraction,
        data.test_fraction,
        data.data_seed,
        source.fixed_test,
        data.folds,
        data.fold,
        data.fold_seed,
    )
    sizes = {"train": data.num_train, "val": data.num_val, "test": data.num_test}
    layouts = {}
    for index, split in enumerate(SPLITS):
        if sizes[split] and len(pools[split]) < 2:
            raise DataError(
                f"the {split} split has {len(pools[split])} source digit(s) of {len(source.labels)} "
                f"(data.val_fraction={data.val_fraction}, data.test_fraction={data.test_fraction}, "
                f"data.folds={data.folds}): a composite needs 2"
            )
        rng = np.random.default_rng([data.data_seed, index])
        layouts[split] = (
            draw_layout(pools[split], sizes[split], data.canvas_size, data.digit_size, data.max_offset, rng)
            if sizes[split]
            else (np.zeros((0, 2), np.int64), np.zeros((0, 4), np.int64))
        )
    # Resize only the source digits some composite uses (MNIST has 70,000).
    used = np.unique(np.concatenate([sources.ravel() for sources, _ in layouts.values()]))
    resized = resize_digits(source.images[used], data.digit_size)
    out = {}
    for split, (sources, positions) in layouts.items():
        local = np.searchsorted(used, sources)
        images, maps = render(resized, local, positions, data.canvas_size, data.ink_threshold)
        out[split] = Composites(
            images=images,
            maps=maps,
            left=source.labels[sources[:, 0]],
            right=source.labels[sources[:, 1]],
            sources=sources,
            positions=positions,
            pool=pools[split],
        )
    return out


# --------------------------------------------------------------------------- the cache
def _file_fingerprints(root: Path) -> list[list[Any]]:
    from .idx import mnist_files

    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in mnist_files(root).values()]


#: The data settings that determine the composites (``root`` enters through the files' fingerprints).
COMPOSITE_SETTINGS = frozenset(
    "format canvas_size digit_size max_offset ink_threshold num_train num_val num_test val_fraction "
    "test_fraction data_seed folds fold fold_seed".split()
)


def composite_key(data: MultiDigitsData) -> str:
    """Hash of everything that determines the composites (not the run's seed, not the cache dir)."""
    settings: dict[str, Any] = {
        "version": CACHE_VERSION,
        **{key: value for key, value in asdict(data).items() if key in COMPOSITE_SETTINGS},
    }
    if data.format == "mnist":
        root = Path(str(data.root)).resolve()
        settings["root"] = str(root)
        settings["files"] = _file_fingerprints(root)
    blob = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_FIELDS = ("images", "maps", "left", "right", "sources", "positions", "pool")


def _save(path: Path, composites: dict[str, Composites]) -> None:
    arrays = {f"{split}_{name}": getattr(c, name) for split, c in composites.items() for name in _FIELDS}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())


def _load(path: Path) -> dict[str, Composites] | None:
    """The cached composites, or ``None`` if the file is unreadable or incomplete (then rebuilt)."""
    try:
        with np.load(path) as f:
            return {split: Composites(**{n: f[f"{split}_{n}"] for n in _FIELDS}) for split in SPLITS}
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def cached_composites(data: MultiDigitsData, cache_dir: Path) -> tuple[dict[str, Composites], dict[str, Any]]:
    """Read the composites of these settings from ``cache_dir`` or build and cache them (atomically)."""
    key = composite_key(data)
    path = Path(cache_dir) / "multidigits" / f"composites-{key}.npz"
    composites = _load(path) if path.is_file() else None
    status = "read"
    if composites is None:
        source = load_source_digits(data)
        composites = build_composites(data, source)
        _save(path, composites)
        status = "built"
    info = {
        "composites_key": key,
        "composites_cache": str(path),
        "composites_cache_status": status,
        "source_digits": {split: len(c.pool) for split, c in composites.items()},
        "composites": {split: len(c) for split, c in composites.items()},
        "ink_fraction": {
            split: float((c.maps > 0).mean()) if len(c) else 0.0 for split, c in composites.items()
        },
    }
    return composites, info
