"""Real thyroid data sets as the task's data: reader → folds → preprocessing cache → datasets.

The training pool is the data set's training split (all samples if it has none); it is divided into
``data.folds`` folds (default 3, the paper's protocol) grouped by patient and stratified by TI-RADS,
saved under the cache so every method and rerun uses the same folds; ``data.fold`` is validation.
The official test split, if any, is the test set. ``data.external_root`` adds a second data set
evaluated zero-shot (ThyroidXL → AIMI in the paper). Images are resized once into a memory-mapped
cache; HD95 is reported in original pixels through each sample's resize factor. Radiomics targets
are computed for the training pool only, with statistics from the training folds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mtlbench.folds import fold_splits, load_or_create_folds

from .augment import training_augmentation
from .cached_dataset import CachedThyroidDataset
from .preprocess import PreprocessedCache, build_cache
from .radiomics import FEATURE_NAMES
from .readers import open_reader
from .readers.base import ThyroidRecord
from .settings import ThyroidData

DEFAULT_FOLDS = 3


class WithPixelSpacing(Dataset):
    """Adds ``pixel_spacing`` (original pixels per cached pixel) to each sample of a cached dataset."""

    def __init__(self, dataset: CachedThyroidDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[index]
        scale = float(self.dataset.cache.scales[self.dataset.cache_row(index)])
        sample["pixel_spacing"] = torch.tensor(1.0 / scale, dtype=torch.float32)
        return sample


def _labels(records: list[ThyroidRecord]) -> np.ndarray:
    return np.array([(r.tirads - 1) if r.tirads else -1 for r in records], dtype=np.int64)


def _root_tag(root: str) -> str:
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:10]


def open_cached(
    root: str, data_format: str, options: dict[str, Any], d: ThyroidData, cache_dir: Path, progress: bool
) -> tuple[list[ThyroidRecord], PreprocessedCache, dict[str, Any]]:
    """The reader's records and their preprocessing cache. Under ``skip_invalid`` samples that fail to
    decode are counted in the read report and their rows listed in ``info["invalid_rows"]``; a data
    set left with no usable sample is a DataError."""
    from mtlbench.errors import DataError

    reader = open_reader(root, data_format, **options)
    records = list(reader.records())
    report = getattr(reader, "report", None)
    if not records:
        skipped = dict(report.skipped) if report is not None else {}
        raise DataError(
            f"{root}: no usable sample in this {data_format} data set"
            + (f" (skipped: {', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))})" if skipped else "")
        )
    cache = build_cache(
        reader,
        records,
        d.image_size,
        cache_dir / "preprocessed",
        workers=d.radiomics_workers,
        progress=progress,
    )
    if cache.invalid:
        _, (file, message, _) = min(cache.invalid.items())
        if not reader.skip_invalid:
            raise DataError(f"{file}: {message}")
        if report is not None:
            for file, message, reason in (cache.invalid[r] for r in sorted(cache.invalid)):
                report.add_problem(file, message, reason)
        if len(cache.invalid) == len(records):
            raise DataError(
                f"{root}: no sample of this {data_format} data set could be decoded (e.g. {file})"
            )
    info = {"format": data_format, "root": root, "samples": len(records) - len(cache.invalid)}
    if report is not None and hasattr(report, "to_dict"):
        info["read_report"] = report.to_dict()
    return records, cache, info


def real_splits(
    d: ThyroidData, cache_dir: Path, seed: int, progress: bool, clinical_targets: bool = True
) -> dict[str, Any]:
    """Datasets and bookkeeping for a real data set (see the module docstring).

    A data set with its own validation split (records whose split is ``val``) is validated on it when
    ``data.folds`` is not set; with ``data.folds`` (cross-validation) those records join the pool the
    folds are drawn from. Either way no record is left unused.
    """
    from .dataset import radiomics_statistics, standardise
    from .radiomics_cache import cached_features

    assert d.root is not None
    records, cache, info = open_cached(d.root, d.format, d.reader_options, d, cache_dir, progress)
    labels = _labels(records)
    usable = [i not in cache.invalid for i in range(len(records))]
    own_val = [i for i, r in enumerate(records) if usable[i] and r.split == "val"]
    pool_splits = (None, "train") if own_val and d.folds is None else (None, "train", "val")
    pool = np.array(
        [i for i, r in enumerate(records) if usable[i] and r.split in pool_splits], dtype=np.int64
    )
    test = np.array([i for i, r in enumerate(records) if usable[i] and r.split == "test"], dtype=np.int64)
    if len(pool) == 0:
        from mtlbench.errors import DataError

        raise DataError(
            f"{d.root}: no usable training sample (splits found: {sorted({str(r.split) for r in records})})"
        )
    k = d.folds or DEFAULT_FOLDS
    if not 0 <= d.fold < k:
        from mtlbench.errors import DataError

        raise DataError(f"data.fold must be in 0..{k - 1} for {k} folds, got {d.fold}")
    if own_val and d.folds is None:
        folds_path = None
        train_idx, val_idx = pool, np.array(own_val, dtype=np.int64)
    else:
        folds_path = cache_dir / "folds" / f"{d.format}-{_root_tag(d.root)}-k{k}-s{d.fold_seed}.json"
        folds = load_or_create_folds(
            folds_path,
            ids=[records[i].sample_id for i in pool],
            groups=[records[i].patient_id for i in pool],
            labels=labels[pool].tolist(),
            n_folds=k,
            seed=d.fold_seed,
        )
        train_pos, val_pos = fold_splits(folds, d.fold)
        train_idx, val_idx = pool[train_pos], pool[val_pos]
    pool = np.sort(np.concatenate([train_idx, val_idx]))
    features = np.full((len(records), len(FEATURE_NAMES)), np.nan)
    features[pool] = cached_features(
        np.asarray(cache.images[pool]),
        np.asarray(cache.masks[pool]),
        cache_dir,
        workers=d.radiomics_workers,
        progress=progress,
    )
    mean, std = radiomics_statistics(features[train_idx])
    clinical = standardise(features, mean, std)
    augment = training_augmentation(d.augment, clinical_targets)

    def dataset(idx: np.ndarray, train: bool) -> Dataset:
        return WithPixelSpacing(
            CachedThyroidDataset(cache, idx, labels, clinical, augment=augment if train else None, seed=seed)
        )

    external = None
    if d.external_root is not None:
        ext_records, ext_cache, ext_info = open_cached(
            d.external_root, d.external_format or "", d.external_options, d, cache_dir, progress
        )
        no_target = np.full((len(ext_records), len(FEATURE_NAMES)), np.nan, dtype=np.float32)
        ext_rows = np.array(
            [i for i in range(len(ext_records)) if i not in ext_cache.invalid], dtype=np.int64
        )
        external = WithPixelSpacing(
            CachedThyroidDataset(ext_cache, ext_rows, _labels(ext_records), no_target)
        )
        info["external"] = ext_info
    if folds_path is None:
        info.update({"split": "the data set's own train/val split", "val_samples": len(val_idx)})
    else:
        info.update({"split": "folds", "folds_file": str(folds_path), "fold": d.fold, "folds": k})
    return {
        "train": dataset(train_idx, True),
        "val": dataset(val_idx, False),
        "test": dataset(test, False) if len(test) else None,
        "external": external,
        "train_labels": labels[train_idx],
        "radiomics_mean": mean,
        "radiomics_std": std,
        "info": info,
    }
