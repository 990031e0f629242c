"""TN3K (Gong et al. 2021): JPEG images and masks in a train-val and a test folder, benign/malignant labels.

Layout::

    trainval-image/0000.jpg  trainval-mask/0000.jpg  label4trainval.csv   (lines like ``0000.jpg,0``)
    test-image/0000.jpg      test-mask/0000.jpg      label4test.csv

Label 0 = benign, 1 = malignant; a header line, if present, is ignored. There is no TI-RADS grade and no
patient id: ``patient_id`` is the sample id, so patient-grouped folds are impossible on TN3K (images of
one patient may land in different folds). Masks are JPEG: foreground = pixel > 127.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from mtlbench.errors import DataError

from .base import ReaderBase, ThyroidRecord
from .folder import list_by_stem

__all__ = ["SPLITS", "Tn3kReader"]

#: split name -> (image folder, mask folder, label file)
SPLITS = {
    "trainval": ("trainval-image", "trainval-mask", "label4trainval.csv"),
    "test": ("test-image", "test-mask", "label4test.csv"),
}


class Tn3kReader(ReaderBase):
    """Reader for TN3K (``splits`` limits which of ``trainval``/``test`` are listed)."""

    name = "tn3k"

    def __init__(
        self, root: str | Path, *, skip_invalid: bool = False, splits: tuple[str, ...] = ("trainval", "test")
    ) -> None:
        super().__init__(root, skip_invalid=skip_invalid)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise DataError(f"unknown TN3K split {unknown[0]!r} (available: {', '.join(SPLITS)})")
        self.splits = tuple(splits)

    def _labels(self, path: Path) -> dict[str, bool | str]:
        """Sample stem -> malignant, or the offending text (reported per image by the caller)."""
        labels: dict[str, bool | str] = {}
        with open(self._require_file(path, "label file"), encoding="utf-8", newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise DataError(f"{path} line {line}: expected 'file,label', got {','.join(row)!r}")
                name, label = row[0].strip(), row[1].strip()
                if line == 1 and not label.lstrip("-").isdigit():
                    continue  # header
                stem = Path(name).stem
                if stem in labels:
                    raise DataError(f"{path} line {line}: {name!r} is labelled twice")
                labels[stem] = {"0": False, "1": True}.get(label, label)
        return labels

    def records(self) -> Iterator[ThyroidRecord]:
        self.report = self._new_report()
        for split in self.splits:
            image_folder, mask_folder, label_file = SPLITS[split]
            images, _ = list_by_stem(self._require_dir(self.root / image_folder, image_folder))
            masks, _ = list_by_stem(self._require_dir(self.root / mask_folder, mask_folder))
            label_path = self.root / label_file
            labels = self._labels(label_path)
            for stem in sorted(set(labels) - set(images)):
                self._problem(
                    label_path, f"{stem!r} is labelled but has no image in {image_folder}/", "missing_image"
                )
            for stem, image_path in sorted(images.items()):
                if stem not in masks:
                    self._problem(
                        image_path, f"image has no mask named {stem}.* in {mask_folder}/", "missing_mask"
                    )
                    continue
                label = labels.get(stem)
                if label is None:
                    self._problem(image_path, f"image has no label in {label_path}", "missing_label")
                    continue
                if not isinstance(label, bool):
                    self._problem(
                        label_path,
                        f"{image_path.name} has label {label!r} (expected 0 benign, 1 malignant)",
                        "unknown_label",
                    )
                    continue
                record = ThyroidRecord(
                    sample_id=f"{split}/{stem}",
                    patient_id=f"{split}/{stem}",
                    source=self.name,
                    image=str(image_path),
                    mask=str(masks[stem]),
                    split=split,
                    malignant=label,
                )
                self.report.count(record)
                yield record
