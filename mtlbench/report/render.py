"""Write a leaderboard as Markdown, LaTeX (booktabs), CSV and one self-contained HTML page.

pandas does the table formatting: ``DataFrame.to_markdown`` (tabulate), ``Styler.to_latex`` and
``Styler.to_html``; best is bold and second underlined, as in the paper's tables.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from mtlbench import atomic
from mtlbench.report.tables import Leaderboard

FORMATS = ("md", "tex", "csv", "html")
BOLD_CSS = "font-weight: bold"
UNDERLINE_CSS = "text-decoration: underline"


def fmt(value: float, like: float | None = None) -> str:
    """4 decimals below 10, 2 above (``like``: the mean whose precision a std follows)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    ref = abs(value if like is None or math.isnan(like) else like)
    return f"{value:.2f}" if ref >= 10 else f"{value:.4f}"


def arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def _cell(mean: float, std: float, pm: str) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return fmt(mean)
    return f"{fmt(mean)}{pm}{fmt(std, mean)}"


def display_frame(lb: Leaderboard, pm: str = " ± ") -> pd.DataFrame:
    """The table as text cells: metric columns per split, then Δm%, mean rank, cost, significance."""
    columns: dict[tuple[str, str], list[str]] = {}
    keys = list(lb.mean.index)
    for split in dict.fromkeys(s for s, _ in lb.columns):
        for s, metric in lb.columns:
            if s != split:
                continue
            header = f"{lb.headers[metric]} {arrow(lb.higher[metric])}"
            columns[(split, header)] = [
                _cell(lb.mean.loc[k, (s, metric)], lb.std.loc[k, (s, metric)], pm) for k in keys
            ]
        if split in lb.delta_m.columns and not lb.options.compact:
            columns[(split, "Δm% ↓")] = [fmt(lb.delta_m.loc[k, split]) for k in keys]
    if not lb.options.compact:
        _extra_columns(lb, keys, columns)
    frame = pd.DataFrame(columns, index=lb.mean.index)
    frame.columns = pd.MultiIndex.from_tuples(list(columns), names=["split", ""])
    return frame


def _extra_columns(lb: Leaderboard, keys: list, columns: dict[tuple[str, str], list[str]]) -> None:
    columns[("all", "mean rank ↓")] = [
        "–" if math.isnan(v) else f"{v:.2f}" for v in lb.mean_rank.reindex(keys).tolist()
    ]
    cost = lb.cost.reindex(keys)
    columns[("cost", "step ms")] = ["–" if math.isnan(v) else f"{v:.1f}" for v in cost["step_ms"]]
    columns[("cost", "step ×vanilla")] = ["–" if math.isnan(v) else f"{v:.2f}" for v in cost["step_ratio"]]
    columns[("cost", "peak MiB")] = ["–" if math.isnan(v) else f"{v:.0f}" for v in cost["memory_mb"]]
    columns[("cost", "memory ×vanilla")] = [
        "–" if math.isnan(v) else f"{v:.2f}" for v in cost["memory_ratio"]
    ]
    if lb.significance:
        split, metric = lb.primary
        title = "Wilcoxon p" if lb.options.test == "wilcoxon" else "Δ 95% bootstrap CI"
        header = f"{title}: {metric} ({split}) vs {lb.options.baseline}"
        columns[("significance", header)] = [
            lb.significance[k].text() if k in lb.significance else "–" for k in keys
        ]


def _marks(lb: Leaderboard, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Boolean masks (best, second) aligned with ``frame``'s columns."""
    best = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    second = best.copy()
    for split, metric in lb.columns:
        col = (split, f"{lb.headers[metric]} {arrow(lb.higher[metric])}")
        best[col] = lb.best[(split, metric)].reindex(frame.index).to_numpy()
        second[col] = lb.second[(split, metric)].reindex(frame.index).to_numpy()
    return best, second


def to_markdown(lb: Leaderboard) -> str:
    frame = display_frame(lb)
    best, second = _marks(lb, frame)
    marked = frame.copy()
    marked[best] = "**" + frame[best] + "**"
    marked[second] = "<u>" + frame[second] + "</u>"
    marked.columns = [
        f"{split}: {name}" if split not in ("all", "cost") else name for split, name in frame.columns
    ]
    if lb.options.compact:
        marked.index = [label for _, label in frame.index]
        marked.index.name = str(frame.index[0][0]) if len(frame.index) else ""
    else:
        marked.index = [f"{label} ({backbone})" for backbone, label in frame.index]
        marked.index.name = "method (backbone)"
    return marked.to_markdown(disable_numparse=True)


def _styler(lb: Leaderboard, frame: pd.DataFrame, bold: str, underline: str) -> pd.io.formats.style.Styler:
    best, second = _marks(lb, frame)
    css = pd.DataFrame("", index=frame.index, columns=frame.columns)
    css[best] = bold
    css[second] = underline
    return frame.style.apply(lambda _: css, axis=None)


#: Characters of the display table that LaTeX (pdflatex) needs spelled as commands.
LATEX_SYMBOLS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "×": r"$\times$", "–": "--", "Δ": r"$\Delta$"}


def to_latex(lb: Leaderboard, caption: str | None = None) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``); pdflatex-safe (ASCII only)."""
    frame = display_frame(lb, pm=r" $\pm$ ")
    styler = _styler(lb, frame, "textbf: --rwrap;", "underline: --rwrap;")
    styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    styler = styler.format(lambda v: v.replace("%", r"\%"))
    text = styler.to_latex(
        hrules=True,
        multicol_align="c",
        multirow_align="naive",
        column_format="ll" + "r" * frame.shape[1],
        caption=caption or f"{lb.task}: mean $\\pm$ std over seeds and folds. Bold: best, underline: second.",
    )
    for symbol, command in LATEX_SYMBOLS.items():
        text = text.replace(symbol, command)
    return text


def to_csv(lb: Leaderboard) -> str:
    """Numbers, not text: one row per table row, mean/std/n per (split, metric), then the extras."""
    parts = {}
    for split, metric in lb.columns:
        parts[f"{split}/{metric}/mean"] = lb.mean[(split, metric)]
        parts[f"{split}/{metric}/std"] = lb.std[(split, metric)]
        parts[f"{split}/{metric}/n"] = lb.count[(split, metric)]
        parts[f"{split}/{metric}/best"] = lb.best[(split, metric)]
        parts[f"{split}/{metric}/second"] = lb.second[(split, metric)]
    for split in lb.delta_m.columns:
        parts[f"{split}/delta_m_pct"] = lb.delta_m[split]
    parts["mean_rank"] = lb.mean_rank
    for key in lb.cost.columns:
        parts[key] = lb.cost[key]
    frame = pd.DataFrame(parts)
    frame.insert(0, "reference", [r.reference for r in lb.rows])
    frame["significance"] = [
        lb.significance[r.key].text() if r.key in lb.significance else "" for r in lb.rows
    ]
    return frame.to_csv()


def runs_csv(lb: Leaderboard) -> str:
    """Every run's scalars, one line per (run, split, metric), for one's own analysis."""
    records = []
    for row in lb.rows:
        for run in row.runs:
            for split, metrics in run.metrics.items():
                for metric, value in metrics.items():
                    records.append(
                        {
                            "row": row.label,
                            "backbone": row.backbone,
                            "method": run.method,
                            "run_id": run.run_id,
                            "seed": run.seed,
                            "fold": run.fold,
                            "split": split,
                            "metric": metric,
                            "value": value,
                            "mean_step_time_s": run.mean_step_time_s,
                            "peak_memory_mb": run.peak_memory_mb,
                            "path": str(run.path),
                        }
                    )
    return pd.DataFrame(records).to_csv(index=False)


def table_html(lb: Leaderboard) -> str:
    frame = display_frame(lb)
    table = _styler(lb, frame, BOLD_CSS, UNDERLINE_CSS).set_table_attributes('class="leaderboard"').to_html()
    return f'<div class="scroll">{table}</div>'


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table.leaderboard { border-collapse: collapse; font-size: 13px; margin-bottom: 1em; }
table.leaderboard th, table.leaderboard td {
  border-bottom: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap;
}
.scroll { overflow-x: auto; max-width: 100%; }
table.leaderboard th { background: #f3f3f3; }
table.leaderboard th.col_heading.level0 { text-align: center; border-left: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
.problems { color: #a00; }
"""


def html_page(
    title: str, sections: list[tuple[str, str]], figures: list[tuple[str, bytes]], notes: list[str]
) -> str:
    """One self-contained page: tables (HTML), notes, and PNG figures embedded as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n{content}")
    if figures:
        body.append("<h2>Figures</h2>")
    for caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        body.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PAGE_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_text(path: Path, text: str) -> Path:
    atomic.write_text(path, text)
    return path
