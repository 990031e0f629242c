"""Walk a whole data set: list every record, decode every sample, count classes and collect problems.

This is what ``mtlbench data check ROOT --format ...`` runs. Every sample is read once, one at a time, so
memory stays at one sample whatever the size of the set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import NO_SPLIT, ReadReport, load_or_skip

__all__ = ["check_dataset", "format_report"]


def check_dataset(root: str | Path, format: str, *, progress: bool = True, **options: Any) -> ReadReport:
    """Read every sample of a data set and report counts per split and class, problems and skips.

    ``options`` go to the reader (``skip_invalid``, ``empty_masks``, ...). With ``skip_invalid=False`` the
    first problem raises :class:`~mtlbench.errors.DataError`; with True every problem is listed and the
    counts cover only the samples that decoded. Masks found empty on load are counted in
    ``notes["empty_masks"]``; masks with values other than 0/1 after binarising cannot occur.
    """
    from . import open_reader

    reader = open_reader(root, format, **options)
    records = list(reader.records())  # metadata only; the pixel data is read below, one sample at a time
    report = ReadReport(source=reader.name, root=str(root))
    report.problems.extend(reader.report.problems)
    report.skipped.update(reader.report.skipped)
    report.notes.update(reader.report.notes)
    sizes: Counter[tuple[int, int]] = Counter()

    def visit(advance: Callable[[], None]) -> None:
        for record in records:
            loaded = load_or_skip(reader, record, report)
            if loaded is not None:
                image, mask = loaded
                sizes[image.shape] += 1
                if not mask.any():
                    report.notes["empty_masks"] += 1
                report.count(record)
            advance()

    if progress and records:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(f"[bold]checking {reader.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("check", total=len(records))
            visit(lambda: bar.advance(task))
    else:
        visit(lambda: None)
    close = getattr(reader, "close", None)
    if close is not None:
        close()
    if sizes:
        report.notes["distinct_image_sizes"] = len(sizes)
        (h, w), _ = sizes.most_common(1)[0]
        report.notes[f"most_common_size_{h}x{w}"] = sizes[(h, w)]
    return report


def format_report(report: ReadReport, max_problems: int = 50) -> str:
    """A plain-text summary: a split x class table, malignancy, skips by reason, the first problems."""
    lines = [f"{report.source} at {report.root}: {report.total} samples read, {report.total_skipped} skipped"]
    splits = sorted(report.class_counts) or [NO_SPLIT]
    classes = sorted({c for counts in report.class_counts.values() for c in counts})
    if classes:
        width = max(len(s) for s in [*splits, "split"])
        cols = [max(len(c), 5) for c in classes]
        header = "  ".join([f"{'split':<{width}}", *(f"{c:>{w}}" for c, w in zip(classes, cols)), "total"])
        lines += ["", header]
        for split in splits:
            counts = report.class_counts.get(split, Counter())
            cells = [f"{counts.get(c, 0):>{w}}" for c, w in zip(classes, cols)]
            lines.append("  ".join([f"{split:<{width}}", *cells, f"{sum(counts.values()):>5}"]))
    if any(c.get("malignant") or c.get("benign") for c in report.malignancy_counts.values()):
        lines.append("")
        for split in sorted(report.malignancy_counts):
            c = report.malignancy_counts[split]
            lines.append(
                f"{split}: malignant {c.get('malignant', 0)}, benign {c.get('benign', 0)}, "
                f"unknown {c.get('unknown', 0)}"
            )
    if report.skipped:
        lines += ["", "skipped:"] + [f"  {reason}: {n}" for reason, n in sorted(report.skipped.items())]
    if report.notes:
        lines += ["", "notes:"] + [f"  {key}: {n}" for key, n in sorted(report.notes.items())]
    if report.problems:
        lines += ["", f"problems ({len(report.problems)}):"]
        lines += [f"  {file}: {message}" for file, message in report.problems[:max_problems]]
        if len(report.problems) > max_problems:
            lines.append(f"  ... and {len(report.problems) - max_problems} more")
    return "\n".join(lines)
