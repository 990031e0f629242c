"""Published NYUv2 and Cityscapes numbers shipped with mtlbench (``reference_results.csv``), each row
with its source.

Units as published: mIoU, pixel accuracy and the ``within_*`` shares in percent (mtlbench's results
give them as fractions), depth errors as they are (as the papers' code computes them: Cityscapes'
relative error of about 30 is a ratio on its inverse-depth labels, not a percentage), angles in
degrees; Cityscapes rows have no normal columns. ``kind`` says whether a row is a run by the source
itself (``LibMTL run``), a number the source quotes from another paper (``quoted by LibMTL``), or a
row of a paper's own table (``paper table``: a paper's table can repeat rows of earlier papers; the
``source`` says which of the rows shipped here it repeats, and such repeats are shipped once).
``method`` is the mtlbench method of the same name, or empty where the correspondence is not exact
and for the single-task (STL) rows. Blank ``epochs``/``batch_size``/``augmentation``/``lr_schedule``:
the paper's text read here does not state it.
"""

from __future__ import annotations

import csv
from importlib import resources
from typing import Any

from .metrics import METRICS

METRIC_KEYS = tuple(key for task in ("seg", "depth", "normal") for key, _ in METRICS[task])
#: Columns published in percent.
PERCENT_KEYS = ("miou", "pixel_acc", "within_11_25", "within_22_5", "within_30")


def read_reference_results() -> list[dict[str, Any]]:
    """Every row of the shipped CSV, metric columns as floats (``None`` where a row has none)."""
    text = resources.files(__package__).joinpath("reference_results.csv").read_text(encoding="utf-8")
    rows = []
    for row in csv.DictReader(text.splitlines()):
        out: dict[str, Any] = dict(row)
        for key in METRIC_KEYS:
            out[key] = float(row[key]) if row[key] else None
        rows.append(out)
    return rows
