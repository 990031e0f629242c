"""The dense scene family's ``data check`` layouts (``mtlbench data check ROOT --format nyuv2``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlbench.errors import DataError

DATA_FORMATS = ("nyuv2", "cityscapes")


def check_data_set(root: Path, data_format: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """Read every file: (the printed report, the JSON report, the number of problems)."""
    from .check import check_dense_dataset, format_report

    if not Path(root).is_dir():
        raise DataError(f"{root} is not a folder")
    unknown = set(options) - {"skip_invalid"}
    if unknown:
        raise DataError(f"data check --format {data_format} takes no options, got {sorted(unknown)}")
    report = check_dense_dataset(
        Path(root), data_format, skip_invalid=bool(options.get("skip_invalid", True))
    )
    return format_report(report), report.to_dict(), len(report.problems)
