"""Readers for real thyroid ultrasound data sets: lazy listing, one-sample decoding, a read report.

``open_reader(root, "thyroidxl")`` returns a reader whose ``records()`` lists samples cheaply and whose
``load(record)`` reads one sample from disk. ``check.check_dataset`` walks a whole data set.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from mtlbench.errors import DataError

from .aimi import AimiReader
from .base import ReaderBase, ReadReport, ThyroidReader, ThyroidRecord, load_or_skip
from .ddti import DdtiReader
from .folder import FolderReader
from .thyroidxl import ThyroidXLReader
from .tn3k import Tn3kReader

__all__ = [
    "READERS",
    "ReadReport",
    "ReaderBase",
    "ThyroidReader",
    "ThyroidRecord",
    "load_or_skip",
    "open_reader",
]

READERS: dict[str, type[ReaderBase]] = {
    "thyroidxl": ThyroidXLReader,
    "aimi": AimiReader,
    "folder": FolderReader,
    "ddti": DdtiReader,
    "tn3k": Tn3kReader,
}


def reader_options(format: str) -> tuple[str, ...]:
    """The keyword options a reader accepts (besides ``root``)."""
    params = inspect.signature(READERS[format].__init__).parameters
    return tuple(name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def open_reader(root: str | Path, format: str, **options: Any) -> ReaderBase:
    """The reader of ``format`` on ``root``; DataError for a missing root, format or option."""
    if format not in READERS:
        raise DataError(f"unknown data format {format!r} (available: {', '.join(READERS)})")
    if not Path(root).exists():
        raise DataError(f"data.root '{root}' does not exist")
    accepted = reader_options(format)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"unknown option {unknown[0]!r} for data format {format!r} (accepted: {', '.join(accepted)})"
        )
    return READERS[format](root, **options)
