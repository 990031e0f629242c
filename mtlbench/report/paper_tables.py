"""The thyroid paper's ablation tables in its layout, from stored runs.

- Tables 3–4, where RLAR is applied: one row per ``method_args.representation`` of the ``rlar``
  runs (the paper's names), precision/recall/F1 (Table 3) or Dice/IoU/HD95 (Table 4) on the test
  split (ThyroidXL) and the external one (AIMI); best bold, second underlined.
- Table 5, leave one clinical feature out: the change in precision/recall/F1 per disabled feature,
  mean ± std over the runs that carry ``feature_ablation_<split>.json`` (``mtlbench
  ablate-features``); bold = largest degradation, underline = second largest (the paper's rule).

Each is a :class:`~mtlbench.report.tables.Leaderboard` with ``options.compact`` set, so the
Markdown/LaTeX/HTML writers render it without the leaderboard's extra columns.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd

from mtlbench.report.collect import RunRecord
from mtlbench.report.tables import Leaderboard, ReportOptions, Row, _best_second_ranks, build_leaderboard

LAYER_NAMES = {
    "last": "Last Encoder Layer",
    "mid": "Mid Encoder Layer",
    "mean_last3": "Mean (Last 3 Layers)",
    "bottleneck": "Bottleneck (default)",
}
CLS_METRICS = ("precision", "recall", "f1")
SEG_METRICS = ("dice", "iou", "hd95")
SPLITS = ("test", "external")


def layer_ablation(runs: list[RunRecord], metrics: tuple[str, ...]) -> Leaderboard | None:
    """Tables 3 (classification metrics) and 4 (segmentation): None if < 2 layers were run."""
    chosen = []
    for run in runs:
        if run.task != "thyroid" or run.method != "rlar" or run.variant is not None:
            continue
        layer = (run.config.get("method_args") or {}).get("representation", "bottleneck")
        chosen.append(dataclasses.replace(run, method=LAYER_NAMES.get(layer, layer)))
    if len({r.method for r in chosen}) < 2:
        return None
    order = list(LAYER_NAMES.values())
    options = ReportOptions(metrics=metrics, splits=SPLITS, compact=True)
    board = build_leaderboard(chosen, "thyroid", options)
    board.rows.sort(key=lambda r: order.index(r.method) if r.method in order else len(order))
    return _reordered(board)


def _reordered(board: Leaderboard) -> Leaderboard:
    """The frames in the order of ``board.rows``."""
    keys = pd.MultiIndex.from_tuples([r.key for r in board.rows], names=["backbone", "method"])
    return dataclasses.replace(
        board,
        mean=board.mean.reindex(keys),
        std=board.std.reindex(keys),
        count=board.count.reindex(keys),
        best=board.best.reindex(keys),
        second=board.second.reindex(keys),
        mean_rank=board.mean_rank.reindex(keys),
        delta_m=board.delta_m.reindex(keys),
        cost=board.cost.reindex(keys),
    )


def feature_ablation(runs: list[RunRecord]) -> Leaderboard | None:
    """Table 5 from the runs' ``feature_ablation_<split>.json``; None if no run has one."""
    deltas: dict[str, dict[tuple[str, str], list[float]]] = {}
    used = []
    for run in runs:
        found = False
        for split in SPLITS:
            path = run.path / f"feature_ablation_{split}.json"
            try:
                rows = json.loads(path.read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found = True
            for row in rows:
                for metric in CLS_METRICS:
                    value = row.get(f"delta_{metric}")
                    if isinstance(value, (int, float)):
                        deltas.setdefault(str(row["feature"]), {}).setdefault((split, metric), []).append(
                            value
                        )
        if found:
            used.append(run)
    if not deltas:
        return None
    columns = [(s, m) for s in SPLITS for m in CLS_METRICS if any((s, m) in d for d in deltas.values())]
    index = pd.MultiIndex.from_tuples(
        [("Δ vs all features", f) for f in deltas], names=["backbone", "method"]
    )
    col_index = pd.MultiIndex.from_tuples(columns, names=["split", "metric"])
    mean = pd.DataFrame(np.nan, index=index, columns=col_index)
    std, count = mean.copy(), pd.DataFrame(0, index=index, columns=col_index)
    for feature, values in deltas.items():
        for col, vs in values.items():
            key = ("Δ vs all features", feature)
            mean.loc[key, col] = float(np.mean(vs))
            std.loc[key, col] = float(np.std(vs, ddof=1)) if len(vs) > 1 else math.nan
            count.loc[key, col] = len(vs)
    degradation_first = {m: False for m in CLS_METRICS}  # the most negative change is "best" (bold)
    best, second, ranks = _best_second_ranks(mean, degradation_first)
    headers = {"precision": "ΔPrecision", "recall": "ΔRecall", "f1": "ΔF1"}
    rows = [Row("Δ vs all features", f, f, used) for f in deltas]
    empty = pd.DataFrame(index=index)
    options = ReportOptions(compact=True)
    return Leaderboard(
        "thyroid",
        rows,
        columns,
        headers,
        degradation_first,
        mean,
        std,
        count,
        best,
        second,
        ranks.mean(axis=1),
        empty,
        pd.DataFrame(np.nan, index=index, columns=["step_ms", "step_ratio", "memory_mb", "memory_ratio"]),
        {},
        ("test", "f1"),
        options,
        notes=[f"bold: largest degradation, underline: second largest; {len(used)} run(s)"],
    )
