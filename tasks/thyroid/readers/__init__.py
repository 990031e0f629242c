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


def _plain_hint(tp: Any) -> Any:
    """``Mapping[...]`` read as ``dict`` (what a configuration holds), inside unions too."""
    import collections.abc
    import types
    from typing import Union, get_args, get_origin

    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_plain_hint(a) for a in get_args(tp))]  # noqa: UP007
    if origin is collections.abc.Mapping or tp is collections.abc.Mapping:
        return dict
    return tp


def typed_reader_options(
    format: str, options: dict[str, Any], where: str = "data.reader_options"
) -> dict[str, Any]:
    """``options`` checked against the reader's keyword options and converted to their types
    (``skip_invalid="false"`` is ``False``); DataError naming ``where.<key>`` otherwise."""
    import difflib
    from typing import get_type_hints

    from mtlbench.config import ConfigError, coerce

    if format not in READERS:
        raise DataError(f"unknown data format {format!r} (available: {', '.join(READERS)})")
    accepted = reader_options(format)
    hints = get_type_hints(READERS[format].__init__)
    typed: dict[str, Any] = {}
    for key, value in options.items():
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"unknown option {key!r} ({where}) for data format {format!r}{hint} "
                f"(accepted: {', '.join(accepted)})"
            )
        try:
            typed[key] = coerce(value, _plain_hint(hints.get(key, Any)), f"{where}.{key}")
        except ConfigError as exc:
            raise DataError(str(exc)) from None
    return typed


def open_reader(root: str | Path, format: str, **options: Any) -> ReaderBase:
    """The reader of ``format`` on ``root``; DataError for a missing root, format or option."""
    if format not in READERS:
        raise DataError(f"unknown data format {format!r} (available: {', '.join(READERS)})")
    if not Path(root).exists():
        raise DataError(f"data.root '{root}' does not exist")
    return READERS[format](root, **typed_reader_options(format, options, "reader option"))
