"""The leaderboard of one task: mean ± std per row and column, best and second, Δm%, ranks, cost, tests.

A *row* is one setting (the resolved configuration without seed and fold) of a method and
backbone; its runs over seeds and folds are its repetitions. A *column* is a (split, metric) pair.

- mean and sample standard deviation (ddof = 1) over the row's runs that have the metric;
- best (bold) and second (underline): the best and second-best distinct means of the column among
  the measured rows (reference rows are shown, never ranked);
- mean rank: per column, rank the measured rows (1 = best, ties averaged), then average the row's
  ranks over the columns it has;
- Δm% (Maninis et al. 2019, in the sign convention of Nash-MTL/FAMO, lower is better): per split,
  Δm = (1/K) Σ_k (−1)^{l_k} (M_m,k − M_b,k) / M_b,k × 100, l_k = 1 if higher is better, against
  the single-task rows of the same backbone (each task declares how: ``single_task_baselines``);
  K = the table's metrics that a single-task row provides;
- cost: mean step time and peak memory, and their ratio to the ``vanilla`` row of the same backbone
  from the same results folder (compare only runs of one machine);
- significance: a paired test against the baseline row over the shared (seed, fold) pairs on one
  metric of one split (:mod:`mtlbench.report.stats`).

Metric directions: higher is better unless the metric is in :data:`LOWER_IS_BETTER`, ends with one
of :data:`LOWER_IS_BETTER_SUFFIXES`, or is named with ``--lower-is-better``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from mtlbench.grid import single_task_settings
from mtlbench.report.collect import RunRecord
from mtlbench.report.front import FRONT_METRICS, Front, build_front, is_sweep_config
from mtlbench.report.stats import CriticalDifference, PairedResult, critical_difference, paired_test

#: Metrics of the known tasks for which lower is better (thyroid: HD95, clinical errors; twoshapes:
#: area error).
LOWER_IS_BETTER = frozenset({"hd95", "area_mae", "clinical_mse", "clinical_mae", "loss"})
LOWER_IS_BETTER_SUFFIXES = ("_mae", "_mse", "_rmse", "_loss", "_error")
SPLIT_ORDER = ("val", "test", "external")

#: Published results shipped with the package, per task: file, data set → split, source, tables used.
REFERENCES: dict[str, dict[str, Any]] = {
    "thyroid": {
        "file": "paper_results.csv",
        "splits": {"ThyroidXL": "test", "AIMI": "external"},
        "source": "Salama et al., Tables 1–2",
        "tables": ("1", "2"),
    }
}


def higher_is_better(metric: str, lower: frozenset[str] | set[str] = frozenset()) -> bool:
    return not (metric in lower or metric in LOWER_IS_BETTER or metric.endswith(LOWER_IS_BETTER_SUFFIXES))


@dataclass
class ReportOptions:
    baseline: str = "vanilla"
    test: str = "wilcoxon"
    metric: str | None = None  # the metric of the significance test (default: the task's monitor)
    split: str | None = None  # its split (default: test if present)
    lower_is_better: frozenset[str] = frozenset()
    reference: bool = False
    metrics: tuple[str, ...] | None = None  # table columns (default: the task's summary metrics)
    front_metrics: tuple[str, str] | None = None  # axes of the scalarisation front
    splits: tuple[str, ...] | None = None  # only these splits (default: every split present)
    compact: bool = False  # metric columns only (the paper's layout), no Δm%/rank/cost/significance
    bench: dict[str, Any] | None = None  # a `mtlbench bench` record: its side-by-side cost columns win


@dataclass
class Row:
    backbone: str
    label: str
    method: str
    runs: list[RunRecord]
    variant: str | None = None
    reference: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.backbone, self.label)


@dataclass
class Leaderboard:
    task: str
    rows: list[Row]
    columns: list[tuple[str, str]]  # (split, metric)
    headers: dict[str, str]  # metric -> display header
    higher: dict[str, bool]  # metric -> higher is better
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    best: pd.DataFrame  # bool
    second: pd.DataFrame  # bool
    mean_rank: pd.Series
    delta_m: pd.DataFrame  # rows × splits
    cost: pd.DataFrame  # step_ms, step_ratio, memory_mb, memory_ratio
    significance: dict[tuple[str, str], PairedResult]
    primary: tuple[str, str]  # (split, metric) of the significance test
    options: ReportOptions
    cd: CriticalDifference | None = None
    notes: list[str] = field(default_factory=list)
    front: Front | None = None

    @property
    def index(self) -> pd.MultiIndex:
        return self.mean.index  # type: ignore[return-value]

    def measured(self) -> list[tuple[str, str]]:
        return [r.key for r in self.rows if not r.reference]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json_text(value)
    return out


def json_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    return str(value)


def _settings_rows(runs: list[RunRecord]) -> list[Row]:
    """One row per setting; labels name the keys that tell settings of one method apart."""
    by_setting: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)
    groups: dict[tuple[str, str], list[str]] = {}
    for setting, members in by_setting.items():
        first = members[0]
        base = f"single-task ({first.variant})" if first.variant else first.method
        groups.setdefault((first.backbone, base), []).append(setting)
    rows = []
    for (backbone, base), settings in sorted(groups.items()):
        flats = {s: _config_flat(by_setting[s][0]) for s in settings}
        differing = sorted(
            k for k in set().union(*flats.values()) if len({f.get(k) for f in flats.values()}) > 1
        )
        for setting in settings:
            members = sorted(by_setting[setting], key=lambda r: (r.seed, r.fold or 0))
            label = base
            if differing:
                label += " [" + ", ".join(f"{k}={flats[setting].get(k)}" for k in differing) + "]"
            first = members[0]
            rows.append(Row(backbone, label, first.method, members, variant=first.variant))
    order = {"vanilla": 0}
    rows.sort(key=lambda r: (r.backbone, r.variant is None, order.get(r.method, 1), r.label))
    return rows


def _config_flat(run: RunRecord) -> dict[str, Any]:
    return {k: v for k, v in _flat(run.config).items() if k not in run.ignored_keys}


def _comparability_note(rows: list[Row]) -> str | None:
    """Keys other than method, backbone and single-task settings that differ between rows."""
    flats = [_config_flat(r.runs[0]) for r in rows if not r.reference]
    if len(flats) < 2:
        return None
    skip = ("method", "method_args.", "backbone", "backbone_args.", "task_args.")
    keys = sorted(
        k for k in set().union(*flats) if not k.startswith(skip) and len({f.get(k) for f in flats}) > 1
    )
    return f"rows also differ in: {', '.join(keys)}" if keys else None


def _task_info(task: str) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """The task's summary metrics (key, header), its default monitor and mode, if it is installed."""
    try:
        from mtlbench.registry import TASKS

        cls = TASKS.get(task).obj
    except Exception:
        return [], None, None
    return list(cls.summary_metrics), cls.default_monitor, cls.default_monitor_mode


def _stat(values: list[float]) -> tuple[float, float, int]:
    arr = np.array([v for v in values if not math.isnan(v)], float)
    n = len(arr)
    if n == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if n > 1 else math.nan, n


def reference_rows(
    task: str,
) -> tuple[list[Row], dict[tuple[str, str], dict[tuple[str, str], tuple[float, float]]]]:
    """Published rows for ``task`` (empty if none ship) and their (split, metric) → (mean, std)."""
    spec = REFERENCES.get(task)
    if spec is None:
        return [], {}
    text = resources.files("mtlbench.report").joinpath("reference", spec["file"]).read_text()
    values: dict[tuple[str, str], dict[tuple[str, str], tuple[float, float]]] = {}
    for rec in csv.DictReader(text.splitlines()):
        if rec["table"] not in spec["tables"] or rec["dataset"] not in spec["splits"]:
            continue
        key = ("published", str(rec["method"]))
        values.setdefault(key, {})[(spec["splits"][rec["dataset"]], rec["metric"])] = (
            float(rec["mean"]),
            float(rec["std"]),
        )
    rows = [Row(b, label, label, [], reference=True) for (b, label) in values]
    return rows, values


def build_leaderboard(runs: list[RunRecord], task: str, options: ReportOptions | None = None) -> Leaderboard:
    options = options or ReportOptions()
    runs = [r for r in runs if r.task == task]
    if not runs:
        raise ValueError(f"no finished runs of task {task!r}")
    summary, monitor, _ = _task_info(task)
    present = {m for r in runs for split in r.metrics.values() for m in split}
    if options.metrics:
        metric_keys = list(options.metrics)
        headers = dict(summary)
    else:
        headers = dict(summary)
        metric_keys = [k for k, _ in summary if k in present] or sorted(present - {"score"})
    headers = {k: headers.get(k, k) for k in metric_keys}
    splits_present = {s for r in runs for s in r.metrics}
    splits = [s for s in SPLIT_ORDER if s in splits_present] + sorted(splits_present - set(SPLIT_ORDER))
    if options.splits:
        splits = [s for s in options.splits if s in splits_present]
    columns = [(s, m) for s in splits for m in metric_keys if any(m in r.metrics.get(s, {}) for r in runs)]
    higher = {m: higher_is_better(m, options.lower_is_better) for m in metric_keys}

    defaults = _task_defaults(task)
    sweep_runs = [r for r in runs if r.variant is None and is_sweep_config(r.config, defaults)]
    rows = _settings_rows([r for r in runs if r not in sweep_runs])
    sweep_rows = _settings_rows(sweep_runs)
    notes = []
    note = _comparability_note(rows)
    if note:
        notes.append(note)
    ref_values: dict[tuple[str, str], dict[tuple[str, str], tuple[float, float]]] = {}
    if options.reference:
        ref_rows, ref_values = reference_rows(task)
        if ref_rows:
            rows += ref_rows
            notes.append(
                f"rows under 'published' are the published numbers ({REFERENCES[task]['source']}), "
                "mapped ThyroidXL → test and AIMI → external; they are shown, not ranked"
            )
        else:
            notes.append(f"no published reference numbers ship for task {task!r}")

    index = pd.MultiIndex.from_tuples([r.key for r in rows], names=["backbone", "method"])
    col_index = pd.MultiIndex.from_tuples(columns, names=["split", "metric"])
    mean = pd.DataFrame(np.nan, index=index, columns=col_index)
    std = mean.copy()
    count = pd.DataFrame(0, index=index, columns=col_index)
    for row in rows:
        for col in columns:
            if row.reference:
                m, s = ref_values[row.key].get(col, (math.nan, math.nan))
                n = 0 if math.isnan(m) else 3
            else:
                m, s, n = _stat([r.metrics.get(col[0], {}).get(col[1], math.nan) for r in row.runs])
            mean.loc[row.key, col], std.loc[row.key, col], count.loc[row.key, col] = m, s, n

    measured = [r.key for r in rows if not r.reference]
    best, second, ranks = _best_second_ranks(mean.loc[measured], higher)
    best = best.reindex(index, fill_value=False)
    second = second.reindex(index, fill_value=False)
    mean_rank = ranks.mean(axis=1).reindex(index)

    delta_m = _delta_m(rows, mean, splits, metric_keys, higher)
    cost = _cost(rows)
    if options.bench is not None:
        used = apply_bench(cost, rows, task, options.bench)
        if used:
            machine = options.bench.get("machine", {})
            notes.append(
                f"cost columns of {', '.join(used)} from `mtlbench bench` ({machine.get('name')}, "
                f"{machine.get('threads')} threads, {options.bench.get('created')}, commit "
                f"{options.bench.get('commit')}): median step and peak memory measured side by side, "
                "ratios per round against vanilla"
            )
    primary_split = options.split or ("test" if "test" in splits else splits[0])
    primary_metric = options.metric or (monitor if monitor in present else metric_keys[0])
    significance = _significance(rows, (primary_split, primary_metric), options)
    if not any(r.method == options.baseline and r.variant is None and not r.reference for r in rows):
        notes.append(f"no {options.baseline!r} runs: no significance column")
    cd = _cd(ranks, [r for r in rows if r.key in measured])
    front = _front(task, rows, sweep_rows, primary_split, options, metric_keys)
    if front is not None:
        notes.append(front.note())
    return Leaderboard(
        task,
        rows,
        columns,
        headers,
        higher,
        mean,
        std,
        count,
        best,
        second,
        mean_rank,
        delta_m,
        cost,
        significance,
        (primary_split, primary_metric),
        options,
        cd,
        notes,
        front,
    )


def _task_defaults(task: str) -> dict[str, Any]:
    import dataclasses

    try:
        from mtlbench.registry import TASKS

        params = TASKS.get(task).obj.Params
    except Exception:
        return {}
    return {f.name: f.default for f in dataclasses.fields(params) if f.default is not dataclasses.MISSING}


def _front(
    task: str, rows: list[Row], sweep_rows: list[Row], split: str, options: ReportOptions, metrics: list[str]
) -> Front | None:
    if not sweep_rows:
        return None
    x, y = options.front_metrics or FRONT_METRICS.get(task) or tuple(metrics[:2])
    up = (higher_is_better(x, options.lower_is_better), higher_is_better(y, options.lower_is_better))

    def point(row: Row) -> tuple[float, float]:
        return (
            _stat([r.metrics.get(split, {}).get(x, math.nan) for r in row.runs])[0],
            _stat([r.metrics.get(split, {}).get(y, math.nan) for r in row.runs])[0],
        )

    sweep = {_weights_label(r): point(r) for r in sweep_rows}
    plain = [r for r in rows if r.method == "vanilla" and r.variant is None and not r.reference]
    sweep.update({f"{r.label} (equal weights)": point(r) for r in plain})
    others = {r.label: point(r) for r in rows if r not in plain and r.variant is None and not r.reference}
    return build_front(split, (x, y), up, sweep, others)


def _weights_label(row: Row) -> str:
    args = row.runs[0].config.get("task_args") or {}
    return "w=(" + ", ".join(f"{float(v):g}" for k, v in args.items() if k.startswith("lambda_")) + ")"


def _best_second_ranks(
    mean: pd.DataFrame, higher: dict[str, bool]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    best = pd.DataFrame(False, index=mean.index, columns=mean.columns)
    second = best.copy()
    ranks = pd.DataFrame(np.nan, index=mean.index, columns=mean.columns)
    for col in mean.columns:
        values = mean[col]
        up = higher[col[1]]
        ranks[col] = values.rank(ascending=not up, method="average")
        distinct = sorted(values.dropna().unique(), reverse=up)
        if distinct:
            best[col] = values == distinct[0]
        if len(distinct) > 1:
            second[col] = values == distinct[1]
    return best, second, ranks


def _single_task_baselines(rows: list[Row], mean: pd.DataFrame, split: str) -> dict[str, dict[str, float]]:
    """backbone → metric → single-task mean on ``split`` (the first single-task row that has it)."""
    baselines: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.variant is None or row.reference:
            continue
        task = row.runs[0].task
        metrics = next(s.metrics for s in single_task_settings(task) if s.name == row.variant)
        for metric in metrics:
            if (split, metric) in mean.columns and not math.isnan(mean.loc[row.key, (split, metric)]):
                baselines.setdefault(row.backbone, {}).setdefault(metric, mean.loc[row.key, (split, metric)])
    return baselines


def delta_m_value(candidate: dict[str, float], baseline: dict[str, float], higher: dict[str, bool]) -> float:
    terms = []
    for metric, base in baseline.items():
        value = candidate.get(metric, math.nan)
        if math.isnan(value) or base == 0 or math.isnan(base):
            continue
        sign = -1.0 if higher[metric] else 1.0
        terms.append(sign * (value - base) / base * 100.0)
    return float(np.mean(terms)) if terms else math.nan


def _delta_m(
    rows: list[Row], mean: pd.DataFrame, splits: list[str], metrics: list[str], higher: dict[str, bool]
) -> pd.DataFrame:
    out = pd.DataFrame(np.nan, index=mean.index, columns=pd.Index(splits, name="split"))
    for split in splits:
        baselines = _single_task_baselines(rows, mean, split)
        for row in rows:
            if row.reference or row.variant is not None or row.backbone not in baselines:
                continue
            base = {m: v for m, v in baselines[row.backbone].items() if m in metrics}
            candidate = {m: mean.loc[row.key, (split, m)] for m in base if (split, m) in mean.columns}
            out.loc[row.key, split] = delta_m_value(candidate, base, higher)
    return out.dropna(axis=1, how="all")


def _plain_row(rows: list[Row], backbone: str, method: str) -> Row | None:
    candidates = [r for r in rows if r.backbone == backbone and r.method == method and r.variant is None]
    candidates = [r for r in candidates if not r.reference]
    plain = [r for r in candidates if r.label == method]
    return (plain or candidates or [None])[0]


def apply_bench(cost: pd.DataFrame, rows: list[Row], task: str, bench: dict[str, Any]) -> list[str]:
    """Overwrite the cost columns of the rows a bench record measured (same task, backbone and
    method, or the exact method label such as ``rlar:every=4``); returns the labels used."""
    runs = bench.get("settings", {}).get("runs", {})
    used = []
    for measured in bench.get("rows", []):
        label = measured.get("method")
        setting = runs.get(label, {})
        if setting.get("task") != task or "median_s" not in measured:
            continue
        for row in rows:
            if row.reference or row.backbone != setting.get("backbone"):
                continue
            if row.label != label and not (row.method == label and row.variant is None):
                continue
            cost.loc[row.key, "step_ms"] = 1000 * measured["median_s"]
            cost.loc[row.key, "step_ratio"] = measured.get("ratio", math.nan)
            cost.loc[row.key, "memory_mb"] = measured.get("memory", {}).get("peak_mb", math.nan)
            cost.loc[row.key, "memory_ratio"] = measured.get("memory_ratio", math.nan)
            used.append(label)
    return sorted(set(used))


def _cost(rows: list[Row]) -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples([r.key for r in rows], names=["backbone", "method"])
    cost = pd.DataFrame(np.nan, index=index, columns=["step_ms", "step_ratio", "memory_mb", "memory_ratio"])
    for row in rows:
        if row.reference:
            continue
        cost.loc[row.key, "step_ms"] = 1000 * _stat([r.mean_step_time_s for r in row.runs])[0]
        cost.loc[row.key, "memory_mb"] = _stat([r.peak_memory_mb for r in row.runs])[0]
    for row in rows:
        vanilla = _plain_row(rows, row.backbone, "vanilla")
        if row.reference or vanilla is None:
            continue
        cost.loc[row.key, "step_ratio"] = cost.loc[row.key, "step_ms"] / cost.loc[vanilla.key, "step_ms"]
        cost.loc[row.key, "memory_ratio"] = (
            cost.loc[row.key, "memory_mb"] / cost.loc[vanilla.key, "memory_mb"]
        )
    return cost


def paired_values(row: Row, split: str, metric: str) -> dict[tuple[int, int | None], float]:
    return {r.repetition: r.metrics[split][metric] for r in row.runs if metric in r.metrics.get(split, {})}


def _significance(
    rows: list[Row], primary: tuple[str, str], options: ReportOptions
) -> dict[tuple[str, str], PairedResult]:
    out = {}
    for row in rows:
        baseline = _plain_row(rows, row.backbone, options.baseline)
        if row.reference or row.variant is not None or baseline is None or baseline.key == row.key:
            continue
        cand = paired_values(row, *primary)
        base = paired_values(baseline, *primary)
        shared = sorted(set(cand) & set(base), key=lambda k: (k[0], k[1] or 0))
        out[row.key] = paired_test(
            np.array([cand[k] for k in shared]), np.array([base[k] for k in shared]), options.test
        )
    return out


def _cd(ranks: pd.DataFrame, rows: list[Row]) -> CriticalDifference | None:
    """Friedman + Nemenyi over the columns every multitask row has (blocks = split × metric)."""
    keys = [r.key for r in rows if r.variant is None]
    block = ranks.reindex(keys).dropna(axis=1, how="any")
    if len(keys) < 3 or block.shape[1] < 2:
        return None
    # ranks among the compared rows only (re-ranking ranks keeps their order and ties)
    block_ranks = block.rank(axis=0, method="average").to_numpy().T  # blocks × rows
    several = len({backbone for backbone, _ in keys}) > 1
    labels = [f"{label} ({backbone})" if several else label for backbone, label in keys]
    return critical_difference(block_ranks, labels)
