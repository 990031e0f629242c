"""The end-of-run table: one row per evaluated split, the task's summary metrics as columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table


def format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def summary_table(result: dict[str, Any], columns: Sequence[tuple[str, str]]) -> Table:
    table = Table(
        title=f"{result['task']} · {result['method']} · {result['backbone']} · run {result['run_id']}"
    )
    table.add_column("split", style="bold")
    for _, header in columns:
        table.add_column(header, justify="right")
    for split, metrics in result["metrics"].items():
        table.add_row(split, *(format_metric(metrics.get(key, "–")) for key, _ in columns))
    return table


def cv_table(summary: dict[str, Any], columns: Sequence[tuple[str, str]]) -> Table:
    """Mean ± std over the folds, one row per split."""
    table = Table(
        title=f"{summary['task']} · {summary['method']} · {summary['backbone']} · {summary['folds']}-fold CV"
    )
    table.add_column("split", style="bold")
    for _, header in columns:
        table.add_column(header, justify="right")
    for split, metrics in summary["metrics"].items():
        cells = []
        for key, _ in columns:
            m = metrics.get(key)
            cells.append("–" if m is None else f"{format_metric(m['mean'])} ± {format_metric(m['std'])}")
        table.add_row(split, *cells)
    return table
