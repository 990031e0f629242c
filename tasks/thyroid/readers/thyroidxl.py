"""ThyroidXL (VNPT-AI, MICCAI 2025): PNG images and masks, the official patient split, per-patient labels.

Layout (``spec/data.md``)::

    train/images/*.png  train/masks/*.png     test/images/*.png  test/masks/*.png
    train/train_annotations.json  test/test_annotations.json      (COCO; optional here)
    stats/train_patients.txt  stats/test_patients.txt  stats/id2info_eng.json

The split of a record is the official one, from the patient lists; an image whose folder disagrees with
its patient's list is a problem. Labels come from ``stats/id2info_eng.json`` (keys read
case-insensitively); when that file is absent, from the per-patient ``info`` dict that some revisions of the
COCO files carry. ``conclusion`` 1, 2 = malignant, 3, 4 = benign. A patient whose ``nodule_1`` is null
has no TI-RADS level (counted as ``unlabelled``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mtlbench.errors import DataError

from .base import ReaderBase, ThyroidRecord, parse_tirads_level

__all__ = ["ThyroidXLReader", "normalise_patient_id"]

SPLITS = ("train", "test")
MALIGNANT_CONCLUSIONS = {1: True, 2: True, 3: False, 4: False}


def normalise_patient_id(text: str) -> str:
    """Patient ids are 8 digits, zero padded, as the JSON keys; ``58`` and ``00000058`` are the same."""
    text = text.strip()
    return text.zfill(8) if text.isdigit() else text


def _lower_keys(value: Any) -> Any:
    """Dict keys lower-cased at every level (the sources disagree on ``TIRADS``/``tirads``)."""
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    return value


def _is_patient_map(info: Any) -> bool:
    return (
        isinstance(info, dict)
        and bool(info)
        and all(str(k).strip().isdigit() and isinstance(v, dict) for k, v in info.items())
    )


class ThyroidXLReader(ReaderBase):
    """Reader for a local copy of ThyroidXL (``splits`` limits which official splits are listed)."""

    name = "thyroidxl"

    def __init__(
        self, root: str | Path, *, skip_invalid: bool = False, splits: tuple[str, ...] = SPLITS
    ) -> None:
        super().__init__(root, skip_invalid=skip_invalid)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise DataError(f"unknown ThyroidXL split {unknown[0]!r} (available: {', '.join(SPLITS)})")
        self.splits = tuple(splits)

    # ------------------------------------------------------------------ metadata
    def _patient_lists(self) -> dict[str, set[str]]:
        lists = {}
        for split in SPLITS:
            path = self._require_file(self.root / "stats" / f"{split}_patients.txt", "patient list")
            lines = path.read_text(encoding="utf-8").splitlines()
            lists[split] = {normalise_patient_id(line) for line in lines if line.strip()}
        return lists

    def _metadata(self) -> tuple[Path, dict[str, dict[str, Any]]]:
        """(source file, patient id -> lower-cased entry) from id2info_eng.json, else the COCO info."""
        path = self.root / "stats" / "id2info_eng.json"
        if path.is_file():
            data = self._read_json(path)
            if not isinstance(data, dict):
                raise DataError(
                    f"{path}: expected a JSON object keyed by patient id, got {type(data).__name__}"
                )
            return path, {normalise_patient_id(str(k)): _lower_keys(v or {}) for k, v in data.items()}
        merged: dict[str, dict[str, Any]] = {}
        sources = []
        for split in SPLITS:
            coco = self.root / split / f"{split}_annotations.json"
            if coco.is_file():
                data = self._read_json(coco)
                info = data.get("info") if isinstance(data, dict) else None
                if _is_patient_map(info):
                    sources.append(coco)
                    merged.update({normalise_patient_id(str(k)): _lower_keys(v) for k, v in info.items()})
        if not sources:
            raise DataError(
                f"{path}: missing, and no COCO annotation file under {self.root} carries a per-patient "
                "'info' dict; the TI-RADS and benign/malignant labels need one of them"
            )
        return sources[0], merged

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc

    def _labels(self, meta_file: Path, patient: str, entry: Mapping[str, Any]) -> tuple[int | None, Any]:
        """(TI-RADS level, malignant) of one patient: ValueError for a TI-RADS value outside 1..5."""
        nodule = entry.get("nodule_1")
        raw = nodule.get("tirads") if isinstance(nodule, dict) else None
        if raw is None:
            raw = entry.get("tirads")
        level = parse_tirads_level(raw)
        conclusion = entry.get("conclusion")
        malignant = None
        if conclusion is not None:
            try:
                malignant = MALIGNANT_CONCLUSIONS[int(conclusion)]
            except (KeyError, TypeError, ValueError):
                raise _LabelError(
                    f"patient {patient} has conclusion {conclusion!r}, expected 1, 2 (malignant) or "
                    "3, 4 (benign)",
                    "unknown_conclusion",
                ) from None
        return level, malignant

    # ------------------------------------------------------------------ records
    def records(self) -> Iterator[ThyroidRecord]:
        self.report = self._new_report()
        lists = self._patient_lists()
        meta_file, meta = self._metadata()
        stats = self.root / "stats"
        both = lists["train"] & lists["test"]
        labels_cache: dict[str, tuple[int | None, bool | None] | _LabelError] = {}
        for folder in self.splits:
            image_dir = self._require_dir(self.root / folder / "images", f"{folder}/images")
            mask_dir = self._require_dir(self.root / folder / "masks", f"{folder}/masks")
            images = sorted(e.name for e in os.scandir(image_dir) if e.name.lower().endswith(".png"))
            masks = {e.name for e in os.scandir(mask_dir) if e.name.lower().endswith(".png")}
            for orphan in sorted(masks - set(images)):
                self._problem(
                    mask_dir / orphan, "mask has no image of the same name", "mask_without_image", 0
                )
            for name in images:
                image_path = image_dir / name
                patient = normalise_patient_id(name.split("_", 1)[0])
                if not (patient.isdigit() and len(patient) == 8):
                    self._problem(
                        image_path,
                        f"file name does not start with an 8-digit patient id and '_' (got {patient!r})",
                        "bad_file_name",
                    )
                    continue
                if patient in both:
                    self._problem(
                        image_path,
                        f"patient {patient} is listed in both {stats / 'train_patients.txt'} and "
                        f"{stats / 'test_patients.txt'}",
                        "patient_in_both_splits",
                    )
                    continue
                split = next((s for s in SPLITS if patient in lists[s]), None)
                if split is None:
                    self._problem(
                        image_path,
                        f"patient {patient} is in neither {stats / 'train_patients.txt'} nor "
                        f"{stats / 'test_patients.txt'}",
                        "patient_not_in_split_files",
                    )
                    continue
                if split != folder:
                    self._problem(
                        image_path,
                        f"image is under {folder}/ but patient {patient} is listed in "
                        f"{stats / f'{split}_patients.txt'}",
                        "split_mismatch",
                    )
                    continue
                if name not in masks:
                    self._problem(image_path, f"image has no mask {mask_dir / name}", "missing_mask")
                    continue
                labels = labels_cache.get(patient)
                if labels is None:
                    labels = labels_cache[patient] = self._patient_labels(
                        meta_file, meta, patient, image_path
                    )
                    if isinstance(labels, _LabelError):
                        # Listed once per patient; every image of the patient is counted as skipped.
                        self._problem(meta_file, labels.message, labels.reason)
                        continue
                elif isinstance(labels, _LabelError):
                    self.report.skipped[labels.reason] += 1
                    continue
                record = ThyroidRecord(
                    sample_id=Path(name).stem,
                    patient_id=patient,
                    source=self.name,
                    image=str(image_path),
                    mask=str(mask_dir / name),
                    split=split,
                    tirads=labels[0],
                    malignant=labels[1],
                )
                self.report.count(record)
                yield record

    def _patient_labels(
        self, meta_file: Path, meta: Mapping[str, dict[str, Any]], patient: str, image_path: Path
    ) -> tuple[int | None, bool | None] | _LabelError:
        """Labels of a patient, or the problem that makes all of the patient's images unusable."""
        entry = meta.get(patient)
        if entry is None:
            return _LabelError(
                f"patient {patient} (image {image_path.name}) is missing from this file", "patient_missing"
            )
        try:
            return self._labels(meta_file, patient, entry)
        except _LabelError as exc:
            return exc
        except ValueError as exc:
            return _LabelError(
                f"patient {patient} has unknown TI-RADS value {exc.args[0]!r} (expected 1..5)",
                "unknown_tirads",
            )


class _LabelError(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
