"""A generic layout for the user's own data: ``images/``, ``masks/`` and ``labels.csv``.

::

    images/<id>.<png|jpg|...>   masks/<id>.<png|...>   (same file stem; foreground = pixel > 0,
                                                         > 127 for JPEG masks)
    labels.csv                  columns id, patient, tirads (1..5, TR1..TR5 or empty),
                                optional split (train, val, test or empty; also training, valid,
                                validation), optional malignant (0/1)

Rows marked ``val`` are the validation split of a run without ``data.folds``; with ``data.folds`` they
join the cross-validation pool. Any other split value is a problem.

Every image needs a row and every row an image; either mismatch is a problem (raise, or skip and count).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtlbench.errors import DataError

from .base import ReaderBase, ThyroidRecord, parse_tirads_level

__all__ = ["IMAGE_SUFFIXES", "REQUIRED_COLUMNS", "FolderReader", "list_by_stem"]

REQUIRED_COLUMNS = ("id", "patient", "tirads")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_by_stem(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """Image files of a folder by stem, and the files whose stem another file already took."""
    by_stem: dict[str, Path] = {}
    clashes: list[Path] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if not entry.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in by_stem:
            clashes.append(path)
        else:
            by_stem[path.stem] = path
    return by_stem, clashes


#: The split column's accepted values (case-insensitive) and what they mean; empty = no split given.
SPLIT_NAMES: dict[str, str | None] = {
    "": None,
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


class FolderReader(ReaderBase):
    """Reader for ``images/`` + ``masks/`` + ``labels.csv`` (records in the CSV's row order)."""

    name = "folder"

    def __init__(
        self, root: str | Path, *, skip_invalid: bool = False, labels_name: str = "labels.csv"
    ) -> None:
        super().__init__(root, skip_invalid=skip_invalid)
        self.labels_path = self._require_file(self.root / labels_name, "labels CSV")

    def _table(self) -> list[dict[str, Any]]:
        import pandas as pd

        try:
            table = pd.read_csv(self.labels_path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.labels_path}: cannot parse as CSV ({exc})") from exc
        table.columns = [str(c).strip().lower() for c in table.columns]
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(
                f"{self.labels_path}: missing column(s) {', '.join(missing)} "
                f"(expected id, patient, tirads and optionally split, malignant)"
            )
        duplicated = table["id"][table["id"].duplicated()].tolist()
        if duplicated:
            raise DataError(f"{self.labels_path}: id {duplicated[0]!r} appears in more than one row")
        return table.to_dict("records")

    def records(self) -> Iterator[ThyroidRecord]:
        self.report = self._new_report()
        images, image_clashes = list_by_stem(self._require_dir(self.root / "images", "images"))
        masks, mask_clashes = list_by_stem(self._require_dir(self.root / "masks", "masks"))
        for path in image_clashes + mask_clashes:
            self._problem(path, f"another file has the same stem {path.stem!r}", "duplicate_stem", 0)
        rows = self._table()
        listed = {str(r["id"]).strip() for r in rows}
        for stem in sorted(set(images) - listed):
            self._problem(images[stem], f"image has no row in {self.labels_path}", "missing_label")
        for line, row in enumerate(rows, start=2):
            sample = str(row["id"]).strip()
            where = f"{self.labels_path} line {line}"
            if sample not in images:
                self._problem(where, f"id {sample!r} has no image in {self.root / 'images'}", "missing_image")
                continue
            if sample not in masks:
                self._problem(
                    images[sample],
                    f"image has no mask named {sample}.* in {self.root / 'masks'}",
                    "missing_mask",
                )
                continue
            try:
                level = parse_tirads_level(row["tirads"])
            except ValueError:
                self._problem(
                    where,
                    f"id {sample!r} has unknown TI-RADS value {row['tirads']!r} (expected 1..5)",
                    "unknown_tirads",
                )
                continue
            malignant: bool | None = None
            text = str(row.get("malignant", "")).strip()
            if text:
                if text not in ("0", "1"):
                    self._problem(
                        where,
                        f"id {sample!r} has malignant {text!r} (expected 0, 1 or empty)",
                        "bad_malignant",
                    )
                    continue
                malignant = text == "1"
            patient = str(row["patient"]).strip()
            if not patient:
                self._problem(where, f"id {sample!r} has an empty patient", "missing_patient")
                continue
            split = SPLIT_NAMES.get(str(row.get("split", "")).strip().lower(), "?")
            if split == "?":
                self._problem(
                    where,
                    f"id {sample!r} has split {row.get('split')!r} (expected train, val, test or empty)",
                    "unknown_split",
                )
                continue
            record = ThyroidRecord(
                sample_id=sample,
                patient_id=patient,
                source=self.name,
                image=str(images[sample]),
                mask=str(masks[sample]),
                split=split,
                tirads=level,
                malignant=malignant,
            )
            self.report.count(record)
            yield record
