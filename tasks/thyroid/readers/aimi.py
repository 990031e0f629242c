"""Stanford AIMI Thyroid Ultrasound Cine-clip: one HDF5 file of frames plus a per-nodule CSV.

``dataset.hdf5`` holds ``annot_id`` (N,) S4 (``b'129_'``), ``frame_num`` (N,) S3 (1-based, as text),
``image`` and ``mask`` (N, 802, 1054) uint8 (mask {0, 255}). ``metadata.csv`` has one row per nodule,
joined on ``annot_id`` *including* the trailing underscore. The file is 36 GB: ``records()`` reads only
``annot_id`` and ``frame_num`` (and, with ``empty_masks="skip"``, the ``mask`` dataset block by block),
never ``image``; ``load()`` reads one frame. Each process opens its own file handle on first use, so a
reader can be handed to DataLoader workers (fork or spawn).

There is no patient id beyond the nodule id: ``patient_id`` is the ``annot_id`` (``"129_"``), so grouping
by patient groups by nodule, which may put two nodules of one patient in different folds. There is no
official split (``split`` is None).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtlbench.errors import DataError

from .base import ReaderBase, SampleError, ThyroidRecord, parse_tirads_level

__all__ = ["ACR_COLUMNS", "METADATA_COLUMNS", "AimiReader"]

METADATA_COLUMNS = (
    "annot_id",
    "age",
    "sex",
    "location",
    "size_x",
    "size_y",
    "size_z",
    "ti-rads_composition",
    "ti-rads_echogenicity",
    "ti-rads_shape",
    "ti-rads_margin",
    "ti-rads_echogenicfoci",
    "ti-rads_level",
    "histopath_diagnosis",
)
#: ACR category (the names of ``tasks/thyroid/tirads.py``) -> CSV column of its points.
ACR_COLUMNS = {
    "composition": "ti-rads_composition",
    "echogenicity": "ti-rads_echogenicity",
    "shape": "ti-rads_shape",
    "margin": "ti-rads_margin",
    "echogenic_foci": "ti-rads_echogenicfoci",
}
HDF5_KEYS = ("annot_id", "frame_num", "image", "mask")
EMPTY_MASK_POLICIES = ("skip", "keep")


class AimiReader(ReaderBase):
    """Reader for the AIMI cine-clip set.

    ``empty_masks="skip"`` (the paper's protocol: 15,093 labelled frames of 17,412) drops frames whose mask
    is all zero, counted as ``skipped["empty_mask"]``; finding them reads the ``mask`` dataset once,
    ``scan_block`` frames at a time. ``"keep"`` lists every frame without touching the pixel data.
    ``frame_stride=k`` keeps frames 1, 1+k, 1+2k, ... of each clip (by frame number, before the
    empty-mask filter); the rest are counted as ``notes["frames_strided_out"]``.
    """

    name = "aimi"

    def __init__(
        self,
        root: str | Path,
        *,
        skip_invalid: bool = False,
        empty_masks: Literal["skip", "keep"] = "skip",
        frame_stride: int = 1,
        hdf5_name: str = "dataset.hdf5",
        metadata_name: str = "metadata.csv",
        scan_block: int = 32,
    ) -> None:
        super().__init__(root, skip_invalid=skip_invalid)
        if empty_masks not in EMPTY_MASK_POLICIES:
            raise DataError(
                f"empty_masks must be one of {', '.join(EMPTY_MASK_POLICIES)}, got {empty_masks!r}"
            )
        if int(frame_stride) != frame_stride or frame_stride < 1:
            raise DataError(f"frame_stride must be a positive integer, got {frame_stride!r}")
        if scan_block < 1:
            raise DataError(f"scan_block must be at least 1, got {scan_block}")
        self.empty_masks = empty_masks
        self.frame_stride = int(frame_stride)
        self.scan_block = int(scan_block)
        self.hdf5_path = self._require_file(self.root / hdf5_name, "HDF5 file")
        self.metadata_path = self._require_file(self.root / metadata_name, "metadata CSV")
        self._handle: Any = None
        self._pid: int | None = None

    # ------------------------------------------------------------------ file handle
    def _file(self) -> Any:
        """This process's read-only handle (reopened after a fork, dropped when pickled)."""
        if self._handle is None or self._pid != os.getpid():
            import h5py

            try:
                self._handle = h5py.File(self.hdf5_path, "r")
            except OSError as exc:
                raise DataError(f"{self.hdf5_path}: cannot open as HDF5 ({exc})") from exc
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def _check_layout(self, h5: Any) -> tuple[int, int, int]:
        missing = [k for k in HDF5_KEYS if k not in h5]
        if missing:
            raise DataError(
                f"{self.hdf5_path}: missing key(s) {', '.join(missing)} (expected {', '.join(HDF5_KEYS)})"
            )
        image, mask = h5["image"], h5["mask"]
        if image.ndim != 3 or image.dtype != np.uint8:
            raise DataError(
                f"{self.hdf5_path}: key 'image' has shape {image.shape} dtype {image.dtype}, "
                "expected (N, H, W) uint8"
            )
        if mask.shape != image.shape or mask.dtype != np.uint8:
            raise DataError(
                f"{self.hdf5_path}: key 'mask' has shape {mask.shape} dtype {mask.dtype}, "
                f"expected {image.shape} uint8 like 'image'"
            )
        n = image.shape[0]
        for key in ("annot_id", "frame_num"):
            ds = h5[key]
            if ds.shape != (n,) or ds.dtype.kind not in "SO":
                raise DataError(
                    f"{self.hdf5_path}: key {key!r} has shape {ds.shape} dtype {ds.dtype}, "
                    f"expected ({n},) byte strings"
                )
        return n, int(image.shape[1]), int(image.shape[2])

    # ------------------------------------------------------------------ metadata
    def _read_metadata(self) -> dict[str, dict[str, Any]]:
        import pandas as pd

        try:
            table = pd.read_csv(self.metadata_path, dtype={"annot_id": str}, keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.metadata_path}: cannot parse as CSV ({exc})") from exc
        missing = [c for c in METADATA_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(
                f"{self.metadata_path}: missing column(s) {', '.join(missing)} "
                f"(expected {','.join(METADATA_COLUMNS)})"
            )
        duplicated = table["annot_id"][table["annot_id"].duplicated()].tolist()
        if duplicated:
            raise DataError(f"{self.metadata_path}: annot_id {duplicated[0]!r} appears in more than one row")
        return {str(row["annot_id"]): row for row in table.to_dict("records")}

    def _nodule_labels(
        self, annot: str, row: dict[str, Any]
    ) -> tuple[int, bool | None, dict[str, int] | None]:
        """(level, malignant, ACR points) from one CSV row; ValueError with (column, value) otherwise."""
        try:
            level = parse_tirads_level(row["ti-rads_level"])
        except ValueError:
            raise ValueError("ti-rads_level", row["ti-rads_level"]) from None
        if level is None:
            raise ValueError("ti-rads_level", row["ti-rads_level"])
        diagnosis = row["histopath_diagnosis"]
        malignant: bool | None
        if diagnosis is None or (isinstance(diagnosis, float) and np.isnan(diagnosis)):
            malignant = None
        elif diagnosis in (0, 1):
            malignant = bool(diagnosis)
        else:
            raise ValueError("histopath_diagnosis", diagnosis)
        points: dict[str, int] | None = {}
        for category, column in ACR_COLUMNS.items():
            value = row[column]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                points = None
                break
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(column, value) from None
            if not number.is_integer() or number < 0:
                raise ValueError(column, value)
            points[category] = int(number)  # type: ignore[index]
        return level, malignant, points

    # ------------------------------------------------------------------ records
    def records(self) -> Iterator[ThyroidRecord]:
        self.report = self._new_report()
        h5 = self._file()
        _, height, width = self._check_layout(h5)
        annot_ids = [a.decode("ascii") if isinstance(a, bytes) else str(a) for a in h5["annot_id"][()]]
        frame_nums = h5["frame_num"][()]
        metadata = self._read_metadata()

        clips: dict[str, list[tuple[int, int]]] = {}
        for row, (annot, raw_frame) in enumerate(zip(annot_ids, frame_nums)):
            text = raw_frame.decode("ascii") if isinstance(raw_frame, bytes) else str(raw_frame)
            if not text.strip().isdigit():
                self._problem(
                    self.hdf5_path,
                    f"frame_num {raw_frame!r} at row {row} (annot_id {annot!r}) is not a number",
                    "bad_frame_num",
                )
                continue
            clips.setdefault(annot, []).append((int(text), row))

        selected: list[tuple[str, int, int]] = []  # (annot, frame, row)
        labels: dict[str, tuple[int, bool | None, dict[str, int] | None]] = {}
        for annot, frames in clips.items():
            if annot not in metadata:
                self._problem(
                    self.metadata_path,
                    f"annot_id {annot!r} ({len(frames)} frames in {self.hdf5_path.name}) has no row "
                    "(the join is on annot_id including the trailing underscore)",
                    "annot_id_missing_from_csv",
                    skipped=len(frames),
                )
                continue
            try:
                labels[annot] = self._nodule_labels(annot, metadata[annot])
            except ValueError as exc:
                column, value = exc.args
                reason = "unknown_tirads" if column == "ti-rads_level" else f"bad_{column}"
                self._problem(
                    self.metadata_path,
                    f"annot_id {annot!r} has {column} {value!r}"
                    + (" (expected 1..5)" if column == "ti-rads_level" else ""),
                    reason,
                    skipped=len(frames),
                )
                continue
            frames.sort()
            kept = frames[:: self.frame_stride]
            self.report.notes["frames_strided_out"] += len(frames) - len(kept)
            selected.extend((annot, frame, row) for frame, row in kept)

        nonempty = (
            self._nonempty_rows([row for _, _, row in selected]) if self.empty_masks == "skip" else None
        )
        for annot, frame, row in selected:
            if nonempty is not None and row not in nonempty:
                self.report.skipped["empty_mask"] += 1
                continue
            level, malignant, points = labels[annot]
            record = ThyroidRecord(
                sample_id=f"{annot}{frame:04d}",
                patient_id=annot,
                source=self.name,
                image=str(self.hdf5_path),
                mask=str(self.hdf5_path),
                index=row,
                tirads=level,
                malignant=malignant,
                acr_points=points,
                size=(height, width),
            )
            self.report.count(record)
            yield record
        if self.report.notes["frames_strided_out"] == 0:
            del self.report.notes["frames_strided_out"]

    def _nonempty_rows(self, rows: list[int]) -> set[int]:
        """Rows whose mask has a foreground pixel, reading ``scan_block`` masks at a time."""
        mask = self._file()["mask"]
        ordered = sorted(rows)
        found: set[int] = set()
        for start in range(0, len(ordered), self.scan_block):
            block = ordered[start : start + self.scan_block]
            if block[-1] - block[0] + 1 == len(block):
                data = mask[block[0] : block[-1] + 1]
            else:
                data = mask[block]
            flags = data.reshape(len(block), -1).max(axis=1) > 0
            found.update(r for r, f in zip(block, flags) if f)
        return found

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        if record.index is None:
            raise DataError(f"{record.image}: AIMI record {record.sample_id!r} has no HDF5 row index")
        h5 = self._file()
        try:
            image = np.asarray(h5["image"][record.index], dtype=np.uint8)
            mask = np.asarray(h5["mask"][record.index], dtype=np.uint8)
        except (OSError, ValueError, IndexError) as exc:
            raise SampleError(
                self.hdf5_path, f"cannot read row {record.index} ({record.sample_id}): {exc}", "corrupt_image"
            ) from exc
        return image, (mask > 0).astype(np.uint8)
