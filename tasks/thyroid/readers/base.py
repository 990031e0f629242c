"""What every thyroid data-set reader shares: the record, the reader protocol, the read report.

A reader lists its samples cheaply (``records()``: file names and labels, no pixel data) and decodes one
sample on demand (``load(record)``). Problems are never dropped silently: with ``skip_invalid=False`` the
first one raises :class:`~mtlbench.errors.DataError` naming the file and the value; with
``skip_invalid=True`` the sample is skipped and the problem and its reason are counted in the report.

Problems visible from metadata (a missing mask, an unknown TI-RADS value, a patient in two splits) are
found by ``records()``. Problems only visible when decoding (a corrupt image, an image/mask size mismatch)
are found by ``load()``, which always raises; :func:`load_or_skip` applies the ``skip_invalid`` policy to
them, and ``check_dataset`` loads every sample through it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mtlbench.errors import DataError

__all__ = [
    "JPEG_SUFFIXES",
    "NO_SPLIT",
    "ReadReport",
    "ReaderBase",
    "SampleError",
    "ThyroidReader",
    "ThyroidRecord",
    "binarise_mask",
    "class_name",
    "load_image_and_mask",
    "load_or_skip",
    "parse_tirads_level",
    "read_gray",
]

#: The split name counted for records of data sets without an official split.
NO_SPLIT = "unsplit"
#: Masks stored lossy: JPEG ringing puts small non-zero values around the edge, so they are thresholded
#: at mid-grey instead of ``> 0``.
JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class ThyroidRecord:
    """One sample's metadata: where its pixels are and what its labels say. No pixel data.

    ``image`` and ``mask`` locate the pixels: file paths, or for a container (the AIMI HDF5 file, the DDTI
    case XML) the container path plus ``index`` (the HDF5 row, the DDTI image number). ``tirads`` is the
    ACR level 1..5 (None when the source has none); ``tirads_raw`` keeps a non-ACR grade as written.
    ``size`` is the original (H, W) when known without decoding.
    """

    sample_id: str
    patient_id: str
    source: str
    image: str
    mask: str | None
    split: str | None = None
    tirads: int | None = None
    malignant: bool | None = None
    acr_points: Mapping[str, int] | None = None
    size: tuple[int, int] | None = None
    index: int | None = None
    tirads_raw: str | None = None


@runtime_checkable
class ThyroidReader(Protocol):
    """A data-set reader: cheap listing, one-sample decoding, a report of what it found."""

    name: str
    skip_invalid: bool
    report: ReadReport

    def records(self) -> Iterator[ThyroidRecord]:
        """All samples' metadata (no pixel data), in a stable order."""
        ...

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        """One sample from disk: image uint8 (H, W), mask uint8 (H, W) with values in {0, 1}."""
        ...


def class_name(record: ThyroidRecord) -> str:
    """The class a record is counted under: its TI-RADS level, else ``tirads:<raw>``, else unlabelled."""
    if record.tirads is not None:
        return f"TR{record.tirads}"
    if record.tirads_raw is not None:
        return f"tirads:{record.tirads_raw}"
    return "unlabelled"


@dataclass
class ReadReport:
    """What a reader (or a full check) found: counts per split and class, problems, skips by reason."""

    source: str
    root: str
    #: split -> TI-RADS class (``TR3``, ``tirads:4a``, ``unlabelled``) -> number of samples
    class_counts: dict[str, Counter[str]] = field(default_factory=dict)
    #: split -> ``malignant`` / ``benign`` / ``unknown`` -> number of samples
    malignancy_counts: dict[str, Counter[str]] = field(default_factory=dict)
    #: (file, message) for every problem found, in the order found
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: reason -> number of samples skipped for it
    skipped: Counter[str] = field(default_factory=Counter)
    #: other counts worth showing (e.g. ``empty_masks``, ``frames_strided_out``)
    notes: Counter[str] = field(default_factory=Counter)

    def count(self, record: ThyroidRecord) -> None:
        split = record.split or NO_SPLIT
        self.class_counts.setdefault(split, Counter())[class_name(record)] += 1
        malignancy = {True: "malignant", False: "benign", None: "unknown"}[record.malignant]
        self.malignancy_counts.setdefault(split, Counter())[malignancy] += 1

    def add_problem(self, file: str | Path, message: str, reason: str, skipped: int = 1) -> None:
        self.problems.append((str(file), message))
        if skipped:
            self.skipped[reason] += skipped

    @property
    def total(self) -> int:
        """Samples counted (read successfully)."""
        return sum(sum(c.values()) for c in self.class_counts.values())

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for ``--json`` output or storing beside results)."""
        return {
            "source": self.source,
            "root": self.root,
            "total": self.total,
            "class_counts": {s: dict(sorted(c.items())) for s, c in sorted(self.class_counts.items())},
            "malignancy_counts": {
                s: dict(sorted(c.items())) for s, c in sorted(self.malignancy_counts.items())
            },
            "skipped": dict(sorted(self.skipped.items())),
            "notes": dict(sorted(self.notes.items())),
            "problems": [{"file": f, "message": m} for f, m in self.problems],
        }


class ReaderBase:
    """Shared state and the skip-or-raise policy; concrete readers implement ``records`` and ``load``."""

    name = "base"

    def __init__(self, root: str | Path, *, skip_invalid: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data.root '{self.root}' does not exist or is not a folder")
        self.skip_invalid = bool(skip_invalid)
        self.report = self._new_report()

    def _new_report(self) -> ReadReport:
        return ReadReport(source=self.name, root=str(self.root))

    def _problem(self, file: str | Path, message: str, reason: str, skipped: int = 1) -> None:
        """Raise (``skip_invalid=False``) or record the problem and count ``skipped`` samples."""
        if not self.skip_invalid:
            raise DataError(f"{file}: {message}")
        self.report.add_problem(file, message, reason, skipped)

    def _require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise DataError(f"{path}: missing {what} folder of the {self.name} layout")
        return path

    def _require_file(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise DataError(f"{path}: missing {what} of the {self.name} layout")
        return path

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        """An image file and its mask file (the layouts that store both as images); AIMI and DDTI override."""
        if record.mask is None:
            raise DataError(f"{record.image}: record has no mask")
        return load_image_and_mask(record.image, record.mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, skip_invalid={self.skip_invalid})"


def load_or_skip(
    reader: ThyroidReader, record: ThyroidRecord, report: ReadReport
) -> tuple[np.ndarray, np.ndarray] | None:
    """``reader.load(record)``; under ``skip_invalid`` a DataError becomes a counted problem and None."""
    try:
        return reader.load(record)
    except DataError as exc:
        if not reader.skip_invalid:
            raise
        if isinstance(exc, SampleError):
            report.add_problem(exc.file, exc.message, exc.reason)
        else:
            report.add_problem(record.image, str(exc), "unreadable_sample")
        return None


class SampleError(DataError):
    """A DataError raised while decoding one sample, carrying the file and a short reason for the report."""

    def __init__(self, file: str | Path, message: str, reason: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = str(file)
        self.message = message
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process pools (the preprocessing workers)
        return (type(self), (self.file, self.message, self.reason))


def read_gray(path: str | Path, what: str = "image") -> np.ndarray:
    """Decode one image file to uint8 (H, W); colour is converted to luminance. Corrupt → DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                raise SampleError(path, f"{what} has {img.mode} pixels, expected 8-bit", "bad_pixel_type")
            gray = img.convert("L") if img.mode != "L" else img
            return np.asarray(gray, dtype=np.uint8).copy()
    except SampleError:
        raise
    except FileNotFoundError as exc:
        raise SampleError(path, f"{what} file not found", f"missing_{what}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SampleError(path, f"corrupt or unreadable {what} ({exc})", f"corrupt_{what}") from exc


def binarise_mask(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """Foreground = pixel > 0, or > 127 for JPEG masks (lossy compression leaves low non-zero noise)."""
    threshold = 127 if str(path).lower().endswith(JPEG_SUFFIXES) else 0
    return (mask > threshold).astype(np.uint8)


def load_image_and_mask(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode an image/mask file pair and check that their sizes agree."""
    image = read_gray(image_path, "image")
    mask = read_gray(mask_path, "mask")
    if image.shape != mask.shape:
        raise SampleError(
            mask_path,
            f"mask size {mask.shape[0]}x{mask.shape[1]} (HxW) differs from image "
            f"{image_path} size {image.shape[0]}x{image.shape[1]}",
            "size_mismatch",
        )
    return image, binarise_mask(mask, mask_path)


def parse_tirads_level(value: Any) -> int | None:
    """An ACR level from 1, ``"1"``, ``"TR1"``, 1.0; None for missing; raises ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, float):
        if np.isnan(value):
            return None
        if not value.is_integer():
            raise ValueError(value)
        value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        level = int(value)
    elif isinstance(value, str):
        text = value.strip().upper()
        if text in ("", "NAN", "NONE", "NULL"):
            return None
        text = text.removeprefix("TI-RADS").removeprefix("TIRADS").removeprefix("TR").strip()
        if not text.isdigit():
            raise ValueError(value)
        level = int(text)
    else:
        raise ValueError(value)
    if not 1 <= level <= 5:
        raise ValueError(value)
    return level
