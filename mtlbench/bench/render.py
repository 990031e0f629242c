"""Tables and figures of a ``mtlbench bench`` record."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from mtlbench import atomic


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{1000 * value:.1f}"


def _records(record: dict[str, Any]) -> list[dict[str, Any]]:
    return record.get("points") or [record]


def bench_tables(record: dict[str, Any]) -> list[Any]:
    """Per measured configuration: a table of time, ratio and memory, and one of the phases."""
    from rich.table import Table

    tables = []
    for rec in _records(record):
        machine = rec["machine"]
        title = f"step cost on {machine.get('name')} ({machine.get('threads')} threads)"
        if rec.get("scale"):
            title += f" · {rec['scale']['key']} = {rec['scale']['value']}"
        table = Table(title=title)
        for column in ("method", "ms", "IQR", "× vanilla", "mean × vanilla", "MiB", "mem × vanilla"):
            table.add_column(column, justify="left" if column == "method" else "right", overflow="fold")
        phases = Table(title="where the time goes (ms, median of the breakdown rounds)")
        for column in ("method", "phase", "ms"):
            phases.add_column(column, justify="right" if column == "ms" else "left", overflow="fold")
        for row in rec["rows"]:
            memory = row.get("memory", {})
            peak = memory.get("peak_mb")
            table.add_row(
                row["method"],
                _ms(row.get("median_s")),
                _ms(row.get("iqr_s")),
                row.get("error", "–") if "ratio" not in row else f"{row['ratio']:.2f}",
                "–" if "mean_ratio" not in row else f"{row['mean_ratio']:.2f}",
                memory.get("error", "–") if peak is None else f"{peak:.0f}",
                "–" if "memory_ratio" not in row else f"{row['memory_ratio']:.2f}",
            )
            for k, v in row.get("phases_s", {}).items():
                phases.add_row(row["method"], k, f"{1000 * v:.1f}")
        tables.append(table)
        if phases.row_count:
            tables.append(phases)
    return tables


def bench_plot(record: dict[str, Any], path: Path) -> Path | None:
    """Ratios to vanilla with their IQR and the phase breakdown; with ``--scale`` the ratio per
    value of the scaled setting. ``None`` if nothing was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records(record)
    if "points" in record:
        key = record["scale_key"]
        fig, ax = plt.subplots(figsize=(6, 4))
        methods = [r["method"] for r in records[0]["rows"] if r["method"] != "vanilla"]
        for method in methods:
            xs, ys = [], []
            for rec in records:
                row = next((r for r in rec["rows"] if r["method"] == method and "ratio" in r), None)
                if row is not None:
                    xs.append(str(rec["scale"]["value"]))
                    ys.append(row["ratio"])
            ax.plot(xs, ys, marker="o", label=method)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel(key)
        ax.set_ylabel("step time × vanilla")
        ax.legend(fontsize=7)
    else:
        rows = [r for r in record["rows"] if "median_s" in r]
        if not rows:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        names = [r["method"] for r in rows]
        ratios = [r.get("ratio", math.nan) for r in rows]
        left.bar(
            names, ratios, yerr=[r.get("ratio_iqr", 0.0) / 2 for r in rows], capsize=3, label="median, IQR"
        )
        means = [r.get("mean_ratio", math.nan) for r in rows]
        left.plot(names, means, "o", color="black", label="ratio of the means")
        left.axhline(1.0, color="grey", lw=0.8)
        left.set_ylabel("step time × vanilla (per round)")
        left.legend(fontsize=7)
        left.tick_params(axis="x", rotation=45)
        phases = sorted(
            {
                k
                for r in rows
                for k in r.get("phases_s", {})
                if "/" in k or k in ("forward", "optimizer", "after step")
            }
        )
        bottoms = [0.0] * len(rows)
        for phase in phases:
            values = [1000 * r.get("phases_s", {}).get(phase, 0.0) for r in rows]
            right.bar(names, values, bottom=bottoms, label=phase)
            bottoms = [b + v for b, v in zip(bottoms, values)]
        rest = [1000 * r.get("phases_s", {}).get("backward", 0.0) for r in rows]
        inner = [
            sum(1000 * v for k, v in r.get("phases_s", {}).items() if k.startswith("backward/")) for r in rows
        ]
        right.bar(
            names, [max(a - b, 0.0) for a, b in zip(rest, inner)], bottom=bottoms, label="backward (rest)"
        )
        right.set_ylabel("ms per step (median of the breakdown rounds)")
        right.tick_params(axis="x", rotation=45)
        right.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    machine = records[0]["machine"]
    fig.suptitle(f"mtlbench bench · {machine.get('name')} · commit {records[0].get('commit')}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
    return path
