"""Figures of a leaderboard (matplotlib, Agg): each function returns PNG bytes, or None if no data.

- bars with error bars (mean ± std) per metric, one figure per split;
- the primary metric against mean step time, one point per row with error bars;
- confusion matrices summed over each row's runs (tasks whose metrics carry ``confusion``);
- training curves from ``metrics.jsonl``: task losses, the monitored validation metric, any
  ``*_penalty`` (RLAR's) and the task-pair gradient cosines ``diag_cos/*``, mean over a row's runs;
- the critical-difference diagram (Demšar 2006) of mean ranks.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mtlbench.report.tables import Leaderboard, Row

DPI = 90


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _label(row: Row, several_backbones: bool) -> str:
    return f"{row.label} ({row.backbone})" if several_backbones else row.label


def _measured(lb: Leaderboard) -> list[Row]:
    return [r for r in lb.rows if not r.reference]


def bars(lb: Leaderboard, split: str) -> bytes | None:
    metrics = [m for s, m in lb.columns if s == split]
    rows = _measured(lb)
    if not metrics or not rows:
        return None
    several = len({r.backbone for r in rows}) > 1
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1, 3.2), squeeze=False)
    colors = plt.cm.tab10(np.arange(len(rows)) % 10)
    for ax, metric in zip(axes[0], metrics):
        means = [lb.mean.loc[r.key, (split, metric)] for r in rows]
        stds = [np.nan_to_num(lb.std.loc[r.key, (split, metric)]) for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, color=colors, capsize=3)
        ax.set_title(f"{lb.headers[metric]} {'↑' if lb.higher[metric] else '↓'}", fontsize=10)
        ax.set_xticks(
            range(len(rows)), [_label(r, several) for r in rows], rotation=60, ha="right", fontsize=7
        )
        finite = [m for m in means if not math.isnan(m)]
        if finite and min(finite) > 0:
            low = min(m - s for m, s in zip(means, stds) if not math.isnan(m))
            ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
    fig.suptitle(f"{lb.task} · {split}: mean ± std over seeds and folds", fontsize=10)
    return _png(fig)


def cost_scatter(lb: Leaderboard) -> bytes | None:
    split, metric = lb.primary
    rows = [
        r for r in _measured(lb) if (split, metric) in lb.mean.columns or _primary_values(r, split, metric)
    ]
    points = []
    for row in rows:
        values = _primary_values(row, split, metric)
        step = lb.cost.loc[row.key, "step_ms"]
        if values and not math.isnan(step):
            points.append(
                (row, step, float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0)
            )
    if not points:
        return None
    several = len({r.backbone for r, *_ in points}) > 1
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for row, step, mean, std in points:
        ax.errorbar(step, mean, yerr=std, fmt="o", capsize=3)
        ax.annotate(_label(row, several), (step, mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("mean training step time (ms)")
    ax.set_ylabel(f"{metric} ({split})")
    ax.set_title(f"{lb.task}: {metric} vs. step time", fontsize=10)
    return _png(fig)


def _primary_values(row: Row, split: str, metric: str) -> list[float]:
    return [r.metrics[split][metric] for r in row.runs if metric in r.metrics.get(split, {})]


def confusion_matrices(lb: Leaderboard, split: str) -> bytes | None:
    summed = []
    for row in _measured(lb):
        mats = [np.array(r.confusion[split]) for r in row.runs if split in r.confusion]
        if mats and all(m.shape == mats[0].shape for m in mats):
            summed.append((row, sum(mats)))
    if not summed:
        return None
    several = len({r.backbone for r, _ in summed}) > 1
    fig, axes = plt.subplots(1, len(summed), figsize=(2.6 * len(summed), 2.8), squeeze=False)
    for ax, (row, mat) in zip(axes[0], summed):
        ax.imshow(mat, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7)
        ax.set_title(_label(row, several), fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{lb.task} · {split}: confusion matrices summed over runs", fontsize=10)
    return _png(fig)


def read_log(path: Any) -> list[dict[str, Any]]:
    """The epochs of a ``metrics.jsonl``; unreadable lines (a crash mid-write) are skipped."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _curve_keys(logs: list[dict[str, Any]], monitor: str) -> list[tuple[str, str]]:
    keys: dict[tuple[str, str], None] = {}
    for rec in logs:
        for key in rec.get("train", {}):
            if key.startswith("loss/") or key.endswith("_penalty") or key.startswith("diag_cos/"):
                keys[("train", key)] = None
        if monitor in rec.get("val", {}):
            keys[("val", monitor)] = None
    return sorted(keys, key=lambda k: (k[0] != "train", not k[1].startswith("loss/"), k[1]))


def training_curves(lb: Leaderboard, monitor: str) -> bytes | None:
    logs = {row.key: [read_log(r.metrics_log()) for r in row.runs] for row in _measured(lb)}
    keys = _curve_keys([rec for runs in logs.values() for log in runs for rec in log], monitor)
    if not keys:
        return None
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.5 * nrows), squeeze=False)
    several = len({r.backbone for r in _measured(lb)}) > 1
    colors = dict(zip([r.key for r in _measured(lb)], plt.cm.tab10(np.arange(len(_measured(lb))) % 10)))
    for ax, (section, key) in zip(axes.flat, keys):
        for row in _measured(lb):
            by_epoch: dict[int, list[float]] = {}
            for log in logs[row.key]:
                for rec in log:
                    value = rec.get(section, {}).get(key)
                    if isinstance(value, (int, float)):
                        by_epoch.setdefault(int(rec["epoch"]), []).append(float(value))
            if by_epoch:
                epochs = sorted(by_epoch)
                means = [np.mean(by_epoch[e]) for e in epochs]
                ax.plot(epochs, means, marker=".", color=colors[row.key], label=_label(row, several))
        ax.set_title(f"{section} {key}", fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    labels = [_label(r, several) for r in _measured(lb)]
    handles = [Line2D([], [], color=colors[r.key], marker=".") for r in _measured(lb)]
    fig.legend(
        handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7, bbox_to_anchor=(0.5, -0.05)
    )
    fig.suptitle(f"{lb.task}: training curves (mean over runs)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def cd_diagram(lb: Leaderboard) -> bytes | None:
    cd = lb.cd
    if cd is None:
        return None
    ranks = dict(sorted(cd.mean_ranks.items(), key=lambda kv: kv[1]))
    k = len(ranks)
    cliques = cd.groups()
    top = -0.3 - 0.25 * len(cliques)  # names start below the clique bars
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.3 * k))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(top - 0.6 * k - 0.3, 2)
    ax.hlines(0, 1, k, color="k")
    for r in range(1, k + 1):
        ax.vlines(r, -0.1, 0.1, color="k")
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    for i, (name, rank) in enumerate(ranks.items()):
        left = i < math.ceil(k / 2)
        y = top - 0.6 * (i if left else k - 1 - i)
        end = 0.6 if left else k + 0.4
        ax.plot([rank, rank, end], [0, y, y], color="k", lw=0.8)
        ax.text(end, y, f"{name} ({rank:.2f})", ha="right" if left else "left", va="center", fontsize=8)
    ax.plot([1, 1 + cd.cd], [1.2, 1.2], color="r", lw=2)
    ax.text(1 + cd.cd / 2, 1.4, f"CD = {cd.cd:.2f}", ha="center", color="r", fontsize=8)
    for j, clique in enumerate(cliques):  # rows not significantly different (Nemenyi)
        lo, hi = min(ranks[n] for n in clique), max(ranks[n] for n in clique)
        ax.plot([lo - 0.05, hi + 0.05], [-0.3 - 0.25 * j] * 2, color="b", lw=2.5, solid_capstyle="round")
    ax.axis("off")
    ax.set_title(
        f"mean ranks over {cd.n_blocks} (split, metric) blocks; Friedman p = {cd.friedman_p:.3g}; "
        f"Nemenyi α = {cd.alpha}",
        fontsize=9,
    )
    return _png(fig)


def front(lb: Leaderboard) -> bytes | None:
    f = lb.front
    if f is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter([p.x for p in f.points], [p.y for p in f.points], color="grey", s=18, label="scalarisation")
    on = sorted((p.x, p.y) for p in f.points if p.on_front)
    ax.plot([p[0] for p in on], [p[1] for p in on], color="grey", lw=1, ls="--", label="front")
    for p in f.methods:
        marker = "*" if p.label in f.beyond else "o"
        ax.scatter([p.x], [p.y], marker=marker, s=80 if marker == "*" else 30, zorder=3)
        ax.annotate(p.label, (p.x, p.y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    x, y = f.metrics
    ax.set_xlabel(f"{x} ({f.split}) {'↑' if f.higher[0] else '↓'}")
    ax.set_ylabel(f"{y} ({f.split}) {'↑' if f.higher[1] else '↓'}")
    ax.set_title(f"{lb.task}: linear-scalarisation front; ★ = beyond it", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)
