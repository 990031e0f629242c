"""The phantom as the thyroid task's data: splits or grouped folds, annotator noise, an external set.

The training pool (``num_train + num_val`` scans) is split either at a fixed index or, with
``data.folds = k``, into k stratified folds (one phantom scan per patient) saved under the cache
so that every method and rerun sees the same folds. Simulated annotators (``task_args.annotators``)
relabel the training pool only; the test split keeps the truth. The external set imitates another
site: a different scanner (lower dynamic range, a blurrier lateral PSF, no compounding, more gain
variation) and an AIMI-like class mix dominated by TR4.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.errors import DataError
from mtlbench.folds import fold_splits, load_or_create_folds

from .annotators import AnnotatorConfig, apply_annotators
from .phantom import PhantomConfig, generate_phantom
from .settings import ThyroidData

#: AIMI's class counts TR1..TR5 (data.md), the external phantom's class mix.
AIMI_CLASS_COUNTS = (52, 732, 4084, 6653, 3572)


def external_phantom_config(size: int, seed: int) -> PhantomConfig:
    """Another 'scanner' for zero-shot evaluation (documented in the module docstring)."""
    return PhantomConfig(
        size=size,
        seed=seed + 1_000_003,
        level_weights=tuple(float(c) for c in AIMI_CLASS_COUNTS),
        dynamic_range_db=40.0,
        psf_lateral=0.02,
        compounding=1,
        gain_jitter_db=4.0,
    )


@dataclasses.dataclass
class PhantomArrays:
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray  # 0-based class
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    external: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    info: dict[str, Any]


def pool_split(
    d: ThyroidData, labels: np.ndarray, cache_dir: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train/val indices inside the pool: fixed, or fold ``d.fold`` of ``d.folds`` grouped folds."""
    n_pool = d.num_train + d.num_val
    if d.folds is None:
        return np.arange(d.num_train), np.arange(d.num_train, n_pool), {"split": "fixed"}
    if not 0 <= d.fold < d.folds:
        raise DataError(f"data.fold must be in 0..{d.folds - 1} for data.folds={d.folds}, got {d.fold}")
    ids = [f"phantom-{d.phantom_seed}-{d.image_size}-{i}" for i in range(n_pool)]
    path = (
        cache_dir
        / "folds"
        / f"phantom_s{d.phantom_seed}_px{d.image_size}_n{n_pool}_k{d.folds}_f{d.fold_seed}.json"
    )
    folds = load_or_create_folds(
        path, ids=ids, groups=ids, labels=labels[:n_pool].tolist(), n_folds=d.folds, seed=d.fold_seed
    )
    train_idx, val_idx = fold_splits(folds, d.fold)
    return (
        np.asarray(train_idx),
        np.asarray(val_idx),
        {"split": "folds", "folds_file": str(path), "fold": d.fold},
    )


def phantom_arrays(d: ThyroidData, annotators: AnnotatorConfig | None, cache_dir: Path) -> PhantomArrays:
    n_pool = d.num_train + d.num_val
    phantom = generate_phantom(n_pool + d.num_test, PhantomConfig(size=d.image_size, seed=d.phantom_seed))
    images, masks, levels = phantom.images, phantom.masks, phantom.levels
    info: dict[str, Any] = {"source": "phantom"}
    train_idx, val_idx, split_info = pool_split(d, levels.astype(np.int64) - 1, cache_dir)
    info.update(split_info)
    if annotators is not None:
        # Readers label the training pool; the test split keeps the truth.
        noisy = apply_annotators(masks[:n_pool], levels[:n_pool], annotators)
        masks = np.concatenate([noisy.masks, masks[n_pool:]])
        levels = np.concatenate([noisy.levels, levels[n_pool:]])
        info["annotators"] = {
            "reader_styles": noisy.reader_styles,
            "reader_per_sample": noisy.reader.tolist(),
            "grade_changed_fraction": float(noisy.flipped.mean()),
            "contour_fallbacks": int(noisy.fallback.sum()),
        }
    external = None
    if d.num_external > 0:
        ext = generate_phantom(d.num_external, external_phantom_config(d.image_size, d.phantom_seed))
        external = (ext.images, ext.masks, ext.levels.astype(np.int64) - 1)
        info["external"] = "phantom from another simulated scanner (see external_phantom_config)"
    return PhantomArrays(
        images=images,
        masks=masks,
        labels=levels.astype(np.int64) - 1,
        train_idx=train_idx,
        val_idx=val_idx,
        test_idx=np.arange(n_pool, n_pool + d.num_test),
        external=external,
        info=info,
    )
