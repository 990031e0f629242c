"""DDTI (Digital Database of Thyroid Images, Pedraza et al. 2015): case XML files with polygon marks.

Layout: ``{case}.xml`` next to ``{case}_{idx}.jpg``. An XML file describes one case::

    <case><number>1</number> ... <tirads>4a</tirads>
      <mark><image>1</image><svg>[{"points": [{"x": 10, "y": 20}, ...], ...}, ...]</svg></mark>
    </case>

Each ``<mark>`` outlines the nodule(s) of image ``idx`` as a JSON list of polygons; the mask is their
union, rasterised at load time (PIL ``ImageDraw.polygon``, outline included).

DDTI's ``tirads`` (2, 3, 4a, 4b, 4c, 5) is *not* ACR TI-RADS (it follows Kwak et al.'s system), so it is
kept as written in ``tirads_raw`` and ``tirads`` stays None. A mapping to ACR levels is a choice the user
makes: ``tirads_map={"2": 2, "3": 3, "4a": 4, "4b": 4, "4c": 5, "5": 5}`` (an example, not a default;
there is no default mapping). Patient id = case number (one case per patient in DDTI).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.errors import DataError

from .base import ReaderBase, SampleError, ThyroidRecord, read_gray

__all__ = ["DDTI_TIRADS", "DdtiReader", "parse_case"]

DDTI_TIRADS = ("2", "3", "4a", "4b", "4c", "5")


def parse_case(path: Path) -> tuple[str | None, dict[int, Any]]:
    """(raw tirads or None, image number -> parsed polygon JSON) of one case XML; DataError if unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SampleError(path, f"not a readable XML file ({exc})", "corrupt_annotation") from exc
    tirads = (root.findtext("tirads") or "").strip().lower() or None
    marks: dict[int, Any] = {}
    for mark in root.iter("mark"):
        number = (mark.findtext("image") or "").strip()
        if not number.isdigit():
            raise SampleError(
                path, f"<mark> has <image> {number!r}, expected an image number", "bad_annotation"
            )
        text = (mark.findtext("svg") or "").strip()
        try:
            polygons = json.loads(text) if text else []
        except json.JSONDecodeError as exc:
            raise SampleError(
                path, f"<svg> of image {number} is not a JSON list of polygons ({exc})", "bad_annotation"
            ) from exc
        marks.setdefault(int(number), []).extend(polygons if isinstance(polygons, list) else [polygons])
    return tirads, marks


def _polygon_points(polygon: Any) -> list[tuple[float, float]]:
    points = polygon.get("points") if isinstance(polygon, dict) else None
    if not isinstance(points, list):
        raise ValueError("a polygon without a 'points' list")
    return [(float(p["x"]), float(p["y"])) for p in points]


def rasterise(polygons: list[Any], size: tuple[int, int]) -> np.ndarray:
    """Union of the polygons as a uint8 {0, 1} (H, W) mask; ValueError for a malformed polygon."""
    from PIL import Image, ImageDraw

    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = _polygon_points(polygon)
        if len(points) < 3:
            raise ValueError(f"a polygon with {len(points)} point(s)")
        draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8).copy()


class DdtiReader(ReaderBase):
    """Reader for DDTI; ``tirads_map`` (raw grade -> ACR level 1..5) is optional and has no default."""

    name = "ddti"

    def __init__(
        self, root: str | Path, *, skip_invalid: bool = False, tirads_map: Mapping[str, int] | None = None
    ) -> None:
        super().__init__(root, skip_invalid=skip_invalid)
        if tirads_map is not None:
            tirads_map = {str(k).strip().lower(): v for k, v in tirads_map.items()}
            bad = {k: v for k, v in tirads_map.items() if k not in DDTI_TIRADS or v not in (1, 2, 3, 4, 5)}
            if bad:
                key = next(iter(bad))
                raise DataError(
                    f"tirads_map entry {key!r}: {bad[key]!r} is invalid (keys from {', '.join(DDTI_TIRADS)}, "
                    "values ACR levels 1..5)"
                )
        self.tirads_map = tirads_map

    def records(self) -> Iterator[ThyroidRecord]:
        self.report = self._new_report()
        entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        cases = [Path(e.path) for e in entries if e.is_file() and e.name.lower().endswith(".xml")]
        images = {e.name for e in entries if e.is_file() and e.name.lower().endswith(".jpg")}
        if not cases:
            raise DataError(
                f"{self.root}: no case .xml files (DDTI layout: {{case}}.xml + {{case}}_{{idx}}.jpg)"
            )
        used: set[str] = set()
        for xml_path in sorted(cases, key=lambda p: (len(p.stem), p.stem)):
            case = xml_path.stem
            own = sorted(n for n in images if n.rsplit("_", 1)[0] == case)
            used.update(own)
            try:
                raw, marks = parse_case(xml_path)
            except SampleError as exc:
                self._problem(xml_path, exc.message, exc.reason, skipped=max(len(own), 1))
                continue
            level = None
            if raw is not None and raw not in DDTI_TIRADS:
                self._problem(
                    xml_path,
                    f"unknown TI-RADS value {raw!r} (DDTI grades: {', '.join(DDTI_TIRADS)})",
                    "unknown_tirads",
                    skipped=max(len(own), 1),
                )
                continue
            if raw is not None and self.tirads_map is not None:
                if raw not in self.tirads_map:
                    self._problem(
                        xml_path,
                        f"TI-RADS value {raw!r} is not in tirads_map",
                        "unknown_tirads",
                        skipped=max(len(own), 1),
                    )
                    continue
                level = self.tirads_map[raw]
            for name in own:
                idx = name.rsplit("_", 1)[1].rsplit(".", 1)[0]
                if not idx.isdigit() or int(idx) not in marks:
                    self._problem(self.root / name, f"image has no <mark> in {xml_path}", "missing_mask")
                    continue
            for number in sorted(marks):
                name = f"{case}_{number}.jpg"
                if name not in images:
                    self._problem(
                        xml_path, f"<mark> of image {number} has no image file {name}", "missing_image"
                    )
                    continue
                record = ThyroidRecord(
                    sample_id=f"{case}_{number}",
                    patient_id=case,
                    source=self.name,
                    image=str(self.root / name),
                    mask=str(xml_path),
                    index=number,
                    tirads=level,
                    tirads_raw=raw,
                )
                self.report.count(record)
                yield record
        for name in sorted(images - used):
            self._problem(self.root / name, "image has no case XML", "missing_mask")

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        if record.mask is None or record.index is None:
            raise DataError(f"{record.image}: DDTI record has no case XML or image number")
        image = read_gray(record.image, "image")
        _, marks = parse_case(Path(record.mask))
        polygons = marks.get(record.index)
        if polygons is None:
            raise SampleError(record.mask, f"no <mark> for image {record.index}", "missing_mask")
        try:
            mask = rasterise(polygons, image.shape)
        except (ValueError, KeyError, TypeError) as exc:
            raise SampleError(
                record.mask,
                f"<svg> of image {record.index} holds {exc} (expected polygons of >= 3 points with x and y)",
                "bad_annotation",
            ) from exc
        return image, mask
