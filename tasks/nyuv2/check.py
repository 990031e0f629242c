"""``mtlbench data check --format nyuv2|cityscapes``: read every file of a preprocessed copy and report
counts, shapes, dtypes, value ranges, and every missing, unreadable or mismatched file on one line."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .layout import BENCHMARKS, CHANNELS, IGNORE_LABEL, SPLITS

#: How far a given normal's length may be from 1 before the file is noted.
UNIT_TOLERANCE = 0.05


class _Stop(Exception):
    pass


@dataclass
class _Range:
    low: float = np.inf
    high: float = -np.inf

    def add(self, values: np.ndarray) -> None:
        if values.size:
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))

    def as_list(self) -> list[float] | None:
        return None if self.low > self.high else [self.low, self.high]


@dataclass
class CheckReport:
    benchmark: str
    root: str
    counts: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtypes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    ranges: dict[str, _Range] = field(default_factory=lambda: defaultdict(_Range))
    classes: set[int] = field(default_factory=set)
    pixels: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.benchmark,
            "root": self.root,
            "counts": self.counts,
            "shapes": self.shapes,
            "dtypes": {k: sorted(set(v)) for k, v in self.dtypes.items()},
            "ranges": {k: r.as_list() for k, r in self.ranges.items()},
            "classes": sorted(self.classes),
            "pixels": dict(self.pixels),
            "notes": self.notes,
            "problems": self.problems,
        }


def check_dense_dataset(root: Path, benchmark: str, skip_invalid: bool = True) -> CheckReport:
    """Every file of ``root`` against the layout of :mod:`.layout` (see its docstring)."""
    spec = BENCHMARKS[benchmark]
    report = CheckReport(benchmark, str(root))

    def problem(text: str) -> None:
        report.problems.append(text)
        if not skip_invalid:
            raise _Stop

    try:
        for split in SPLITS:
            _check_split(Path(root), split, spec, report, problem)
    except _Stop:
        report.notes.append("stopped at the first problem (--stop-at-first)")
    for split, official in spec.official_counts:
        found = report.counts.get(split)
        if found is not None and found != official:
            report.notes.append(f"{split}: {found} samples, the published set has {official}")
    if report.shapes and tuple(report.shapes["image"][:2]) != spec.size:
        report.notes.append(
            f"images are {report.shapes['image'][:2]}, the published set's are {list(spec.size)}"
        )
    return report


def _check_split(root: Path, split: str, spec: Any, report: CheckReport, problem: Any) -> None:
    folders = spec.folders()
    base = root / split
    names: dict[str, set[str]] = {}
    for folder in folders:
        path = base / folder
        if not path.is_dir():
            problem(f"{path}: folder missing")
            names[folder] = set()
            continue
        names[folder] = {p.name for p in path.glob("*.npy")}
    n = len(names["image"])
    report.counts[split] = n
    expected = {f"{i}.npy" for i in range(n)}
    for folder in folders:
        if not (base / folder).is_dir():
            continue
        for name in sorted(expected - names[folder], key=_index_order):
            problem(f"{base / folder / name}: missing (image/ has {n} files, so 0..{n - 1}.npy are expected)")
        for name in sorted(names[folder] - expected, key=_index_order):
            problem(f"{base / folder / name}: unexpected file (not one of 0..{n - 1}.npy)")
    for i in range(n):
        arrays = {}
        for folder in folders:
            path = base / folder / f"{i}.npy"
            if not path.is_file():
                continue
            try:
                arrays[folder] = (path, np.load(path, allow_pickle=False))
            except Exception as exc:  # any unreadable file is one line, not a traceback
                problem(f"{path}: unreadable ({type(exc).__name__}: {exc})")
        _check_sample(arrays, spec, report, problem)


def _index_order(name: str) -> tuple[int, str]:
    stem = name[:-4]
    return (int(stem), name) if stem.isdigit() else (1 << 62, name)


def _check_sample(
    arrays: dict[str, tuple[Path, np.ndarray]], spec: Any, report: CheckReport, problem: Any
) -> None:
    for folder, (path, array) in arrays.items():
        report.dtypes[folder].append(str(array.dtype))
        channels = CHANNELS[folder]
        want = "(H, W)" if channels is None else f"(H, W, {channels})"
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            problem(f"{path}: dtype {array.dtype} is not a real number type")
            continue
        ok = array.ndim == 2 if channels is None else (array.ndim == 3 and array.shape[-1] == channels)
        if not ok:
            problem(f"{path}: shape {list(array.shape)}, expected {want}")
            continue
        # Every array of the data set has the pixels of the first image read.
        reference = report.shapes.setdefault("image", [*array.shape[:2], 3])[:2]
        if list(array.shape[:2]) != reference:
            problem(
                f"{path}: {array.shape[0]}×{array.shape[1]} pixels, "
                f"the first image has {reference[0]}×{reference[1]}"
            )
            continue
        report.shapes.setdefault(folder, list(array.shape))
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            problem(f"{path}: {int((~np.isfinite(values)).sum())} NaN or infinite values")
            continue
        _check_values(folder, path, values, spec, report, problem)


def _check_values(
    folder: str, path: Path, values: np.ndarray, spec: Any, report: CheckReport, problem: Any
) -> None:
    if folder == "image":
        report.ranges["image"].add(values)
    elif folder == "label":
        if not np.array_equal(values, np.rint(values)):
            problem(f"{path}: labels are not whole numbers")
            return
        bad = (values != IGNORE_LABEL) & ((values < 0) | (values >= spec.num_classes))
        if bad.any():
            odd = sorted({int(v) for v in np.unique(values[bad])})[:6]
            problem(f"{path}: labels {odd} outside -1 (ignore) and 0..{spec.num_classes - 1}")
        report.classes.update(int(v) for v in np.unique(values[(values >= 0) & ~bad]))
        report.pixels["label"] += values.size
        report.pixels["label_ignored"] += int((values == IGNORE_LABEL).sum())
    elif folder == "depth":
        if (values < 0).any():
            problem(f"{path}: {int((values < 0).sum())} negative depths")
        valid = values != 0
        report.ranges["depth"].add(values[valid])
        report.pixels["depth"] += values.size
        report.pixels["depth_invalid"] += int((~valid).sum())
    elif folder == "normal":
        valid = values.sum(-1) != 0  # the papers' test for a given normal
        report.ranges["normal"].add(values[valid])
        lengths = np.linalg.norm(values[valid], axis=-1)
        off = int((np.abs(lengths - 1.0) > UNIT_TOLERANCE).sum())
        if off:
            report.notes.append(f"{path}: {off} given normals are not unit length (±{UNIT_TOLERANCE})")
        report.pixels["normal"] += int(valid.size)
        report.pixels["normal_invalid"] += int((~valid).sum())


def format_report(report: CheckReport) -> str:
    d = report.to_dict()
    lines = [f"{report.benchmark} at {report.root}"]
    lines.append("samples: " + ", ".join(f"{s} {n}" for s, n in d["counts"].items()))
    for folder, shape in d["shapes"].items():
        rng = d["ranges"].get(folder)
        text = f"  {folder:<7} shape {shape}  dtype {', '.join(d['dtypes'][folder])}"
        if rng is not None:
            text += f"  range [{rng[0]:.4g}, {rng[1]:.4g}]" + (" (valid pixels)" if folder != "image" else "")
        lines.append(text)
    if d["classes"]:
        lines.append(f"  classes present: {d['classes']}")
    px = d["pixels"]
    for key, total in (("label_ignored", "label"), ("depth_invalid", "depth"), ("normal_invalid", "normal")):
        if px.get(total):
            lines.append(f"  {key.replace('_', ' ')}: {100 * px[key] / px[total]:.2f}% of pixels")
    lines += [f"note: {n}" for n in d["notes"]]
    lines.append(f"problems: {len(d['problems'])}")
    lines += [f"  {p}" for p in d["problems"]]
    return "\n".join(lines)
