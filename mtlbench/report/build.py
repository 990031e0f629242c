"""``mtlbench report``: read a results folder, build every task's leaderboard, write tables and plots.

Outputs (in ``out_dir``): ``leaderboard_<task>.md``, ``.tex``, ``.csv`` (numbers) and
``runs_<task>.csv`` (every run's scalars), ``report.html`` (all tasks, figures embedded) and the
figures as PNG files under ``figures/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mtlbench.report.collect import REPORT_MARKER, Collection, collect_runs
from mtlbench.report.tables import Leaderboard, ReportOptions, _task_info, build_leaderboard


@dataclass
class ReportOutput:
    collection: Collection
    leaderboards: list[Leaderboard] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def _figures(lb: Leaderboard) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, png) of every figure that has data."""
    from mtlbench.report import plots

    _, monitor, _ = _task_info(lb.task)
    splits = list(dict.fromkeys(s for s, _ in lb.columns))
    candidates = [(f"bars_{s}", f"{lb.task}: metrics on {s} (mean ± std)", plots.bars(lb, s)) for s in splits]
    candidates.append(
        (
            "cost",
            f"{lb.task}: {lb.primary[1]} ({lb.primary[0]}) vs step time",
            plots.cost_scatter(lb),
        )
    )
    candidates += [
        (f"confusion_{s}", f"{lb.task}: confusion matrices ({s})", plots.confusion_matrices(lb, s))
        for s in splits
    ]
    candidates.append(
        ("curves", f"{lb.task}: training curves", plots.training_curves(lb, monitor or lb.primary[1]))
    )
    candidates.append(("front", f"{lb.task}: scalarisation front with methods", plots.front(lb)))
    candidates.append(("cd", f"{lb.task}: critical-difference diagram", plots.cd_diagram(lb)))
    return [
        (f"{lb.task}_{stem}" if not stem.startswith(lb.task) else stem, caption, png)
        for stem, caption, png in candidates
        if png is not None
    ]


def write_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    task: str | None = None,
    formats: tuple[str, ...] = ("md", "tex", "csv", "html"),
    options: ReportOptions | None = None,
    plots: bool = True,
) -> ReportOutput:
    from mtlbench.report import render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MARKER).touch()
    collection = collect_runs(runs_dir, task, exclude=(out,))
    output = ReportOutput(collection)
    tasks = sorted({r.task for r in collection.runs})
    sections: list[tuple[str, str]] = []
    figures: list[tuple[str, bytes]] = []
    notes = [f"skipped {p}" for p in collection.problems]
    for name in tasks:
        lb = build_leaderboard(collection.runs, name, options)
        output.leaderboards.append(lb)
        stem = out / f"leaderboard_{name}"
        if "md" in formats:
            output.written.append(render.write_text(stem.with_suffix(".md"), _markdown(lb)))
        if "tex" in formats:
            output.written.append(render.write_text(stem.with_suffix(".tex"), render.to_latex(lb)))
        if "csv" in formats:
            output.written.append(render.write_text(stem.with_suffix(".csv"), render.to_csv(lb)))
            output.written.append(render.write_text(out / f"runs_{name}.csv", render.runs_csv(lb)))
        sections.append((f"{name}: leaderboard", render.table_html(lb) + _notes_html(lb)))
        if plots:
            for file_stem, caption, png in _figures(lb):
                from mtlbench import atomic

                path = out / "figures" / f"{file_stem}.png"
                atomic.write_bytes(path, png)
                output.written.append(path)
                output.figures.append(caption)
                figures.append((caption, png))
        for number, title, table in _paper_tables(collection, name):
            sections.append((f"{name}: Table {number} layout — {title}", render.table_html(table)))
            base = out / f"table{number}_{name}"
            if "md" in formats:
                output.written.append(
                    render.write_text(base.with_suffix(".md"), render.to_markdown(table) + "\n")
                )
            if "tex" in formats:
                caption = f"{title}: mean $\\pm$ std over runs. " + (
                    "Bold: largest degradation, underline: second largest."
                    if number == 5
                    else "Bold: best, underline: second."
                )
                output.written.append(
                    render.write_text(base.with_suffix(".tex"), render.to_latex(table, caption))
                )
    if "html" in formats:
        page = render.html_page("mtlbench report", sections, figures, notes)
        output.written.append(render.write_text(out / "report.html", page))
    return output


def _notes_html(lb: Leaderboard) -> str:
    import html

    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in leaderboard_notes(lb)) + "</ul>"


def leaderboard_notes(lb: Leaderboard) -> list[str]:
    """What a reader needs to read the table: tests used, comparability, reference rows."""
    lines = list(lb.notes)
    split, metric = lb.primary
    if lb.options.test == "wilcoxon":
        lines.append(
            f"significance: two-sided Wilcoxon signed-rank test of {metric} ({split}) against "
            f"{lb.options.baseline}, paired over (seed, fold); n = number of pairs"
        )
    else:
        lines.append(
            f"significance: 95% percentile bootstrap CI (10,000 resamples) of the mean paired difference "
            f"in {metric} ({split}) against {lb.options.baseline}"
        )
    if lb.cd is not None:
        lines.append(
            f"Friedman test over {lb.cd.n_blocks} (split, metric) blocks: "
            f"χ² = {lb.cd.friedman_statistic:.3f}, "
            f"p = {lb.cd.friedman_p:.3g}; Nemenyi CD = {lb.cd.cd:.3f} (α = {lb.cd.alpha})"
        )
    lines.append(
        "Δm% (lower is better) is relative to single-task runs of the same backbone where they exist"
    )
    return lines


def _markdown(lb: Leaderboard) -> str:
    from mtlbench.report import render

    notes = "".join(f"- {line}\n" for line in leaderboard_notes(lb))
    return f"{render.to_markdown(lb)}\n\n**bold**: best, <u>underline</u>: second (per column).\n\n{notes}"


def _paper_tables(collection: Collection, task: str) -> list[tuple[int, str, Leaderboard]]:
    """The thyroid paper's Tables 3–5 where the runs hold what they need."""
    if task != "thyroid":
        return []
    from mtlbench.report import paper_tables as pt

    runs = [r for r in collection.runs if r.task == task]
    candidates = [
        (3, "RLAR representation layer (classification)", pt.layer_ablation(runs, pt.CLS_METRICS)),
        (4, "RLAR representation layer (segmentation)", pt.layer_ablation(runs, pt.SEG_METRICS)),
        (5, "leave one clinical feature out", pt.feature_ablation(runs)),
    ]
    return [(n, title, table) for n, title, table in candidates if table is not None]
