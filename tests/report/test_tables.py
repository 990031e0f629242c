"""Every leaderboard value recomputed independently from the raw result.json files."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mtlbench.report.build import write_report
from mtlbench.report.collect import collect_runs
from mtlbench.report.render import to_latex, to_markdown
from mtlbench.report.tables import ReportOptions, build_leaderboard
from tests.report.fixtures import CLS, SEG, THYROID_METRICS, thyroid_grid, write_run

HIGHER = {m: m != "hd95" for m in THYROID_METRICS}
METHODS = ("vanilla", "pcgrad", "rlar", "mgda")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("report") / "runs"
    thyroid_grid(runs)
    return runs


def raw(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("thyroid/*/result.json"))]


def values(results: list[dict], method: str, split: str, metric: str, single: str | None = None) -> dict:
    """(seed, fold) -> value for the multitask runs of ``method`` (or the single-task runs ``single``)."""
    out = {}
    for r in results:
        tasks = r["config"]["task_args"].get("tasks")
        if r["method"] != method or (tasks != [single] if single else tasks is not None):
            continue
        if metric in r["metrics"][split]:
            out[(r["config"]["seed"], r["config"]["data"]["fold"])] = r["metrics"][split][metric]
    return out


@pytest.fixture(scope="module")
def board(grid: Path):
    return build_leaderboard(collect_runs(grid).runs, "thyroid", ReportOptions())


def test_mean_std_and_rows(grid: Path, board) -> None:
    results = raw(grid)
    labels = {label for _, label in board.mean.index}
    assert labels == {*METHODS, "single-task (seg)", "single-task (cls)"}
    for method in METHODS:
        for split in ("val", "test", "external"):
            for metric in THYROID_METRICS:
                v = list(values(results, method, split, metric).values())
                assert len(v) == 3
                assert board.mean.loc[("unet_small", method), (split, metric)] == pytest.approx(np.mean(v))
                assert board.std.loc[("unet_small", method), (split, metric)] == pytest.approx(
                    np.std(v, ddof=1)
                )


def test_best_second_and_mean_rank(grid: Path, board) -> None:
    results = raw(grid)
    rows = {m: (m, None) for m in METHODS} | {
        "single-task (seg)": ("vanilla", "seg"),
        "single-task (cls)": ("vanilla", "cls"),
    }
    ranks: dict[str, list[float]] = {label: [] for label in rows}
    for split in ("val", "test", "external"):
        for metric in THYROID_METRICS:
            means = {}
            for label, (method, single) in rows.items():
                v = list(values(results, method, split, metric, single).values())
                if v:
                    means[label] = float(np.mean(v))
            order = sorted(set(means.values()), reverse=HIGHER[metric])
            for label, m in means.items():
                key = ("unet_small", label)
                assert bool(board.best.loc[key, (split, metric)]) == (m == order[0])
                assert bool(board.second.loc[key, (split, metric)]) == (m == order[1])
            sign = -1 if HIGHER[metric] else 1
            r = stats.rankdata([sign * means[label] for label in means], method="average")
            for label, rank in zip(means, r):
                ranks[label].append(float(rank))
    for label, rs in ranks.items():
        assert board.mean_rank.loc[("unet_small", label)] == pytest.approx(np.mean(rs))


def test_delta_m(grid: Path, board) -> None:
    results = raw(grid)
    for method in METHODS:
        for split in ("val", "test", "external"):
            terms = []
            for metric, single in [(m, "seg") for m in SEG] + [(m, "cls") for m in CLS]:
                base = np.mean(list(values(results, "vanilla", split, metric, single).values()))
                mine = np.mean(list(values(results, method, split, metric).values()))
                l_k = 1 if HIGHER[metric] else 0
                terms.append((-1) ** l_k * (mine - base) / base * 100)
            assert board.delta_m.loc[("unet_small", method), split] == pytest.approx(np.mean(terms))
    assert math.isnan(board.delta_m.loc[("unet_small", "single-task (seg)"), "test"])


def test_significance_against_scipy(grid: Path, board) -> None:
    results = raw(grid)
    base = values(results, "vanilla", "test", "score")
    for method in ("pcgrad", "rlar", "mgda"):
        mine = values(results, method, "test", "score")
        keys = sorted(base)
        expected = stats.wilcoxon([mine[k] for k in keys], [base[k] for k in keys]).pvalue
        result = board.significance[("unet_small", method)]
        assert result.p_value == pytest.approx(expected) and result.n == 3
    assert ("unet_small", "vanilla") not in board.significance
    boot = build_leaderboard(collect_runs(grid).runs, "thyroid", ReportOptions(test="bootstrap"))
    mine = values(results, "rlar", "test", "score")
    diff = np.array([mine[k] - base[k] for k in sorted(base)])
    ci = stats.bootstrap(
        (diff,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(0)
    ).confidence_interval
    got = boot.significance[("unet_small", "rlar")]
    assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high))
    assert got.mean_difference == pytest.approx(diff.mean())


def test_cost_and_critical_difference(grid: Path, board) -> None:
    results = raw(grid)
    step = {
        m: np.mean(
            [r["mean_step_time_s"] for r in results if r["method"] == m and not r["config"]["task_args"]]
        )
        for m in METHODS
    }
    for m in METHODS:
        assert board.cost.loc[("unet_small", m), "step_ratio"] == pytest.approx(step[m] / step["vanilla"])
    # Friedman over the 18 (split, metric) blocks of the four multitask rows
    blocks = []
    for split in ("val", "test", "external"):
        for metric in THYROID_METRICS:
            sign = -1 if HIGHER[metric] else 1
            means = [sign * np.mean(list(values(results, m, split, metric).values())) for m in METHODS]
            blocks.append(stats.rankdata(means))
    blocks = np.array(blocks)
    assert board.cd is not None and board.cd.n_blocks == 18
    assert board.cd.friedman_p == pytest.approx(stats.friedmanchisquare(*blocks.T).pvalue)
    q = stats.studentized_range.ppf(0.95, 4, np.inf) / np.sqrt(2)
    assert board.cd.cd == pytest.approx(q * np.sqrt(4 * 5 / (6 * 18)))
    assert board.cd.mean_ranks == pytest.approx(dict(zip(METHODS, blocks.mean(axis=0))))


def test_markdown_renders_as_table_with_marks(board) -> None:
    text = to_markdown(board)
    lines = text.strip().splitlines()
    assert lines[0].startswith("| method (backbone)") and re.fullmatch(r"\|(:?-+:?\|)+", lines[1])
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    assert len(lines) == 2 + 6
    mgda = next(line for line in lines if line.startswith("| mgda"))
    best = board.mean.loc[("unet_small", "mgda"), ("test", "dice")]
    assert f"**{best:.4f} ± " in mgda


def check_latex(text: str) -> None:
    """A structural parse: balanced braces, booktabs rules, every row with the tabular's columns, ASCII."""
    assert text.isascii()
    depth = 0
    for ch in re.sub(r"\\[{}%$&]", "", text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", text)
    assert spec and "\\end{tabular}" in text
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert text.count(rule) == 1
    body = text.split("\\midrule")[1].split("\\bottomrule")[0]
    header = text.split("\\toprule")[1].split("\\midrule")[0]
    columns = len(spec.group(1))
    for line in [*header.strip().splitlines(), *body.strip().splitlines()]:
        assert line.rstrip().endswith("\\\\")
        cells = re.sub(r"\\&", "", line).count("&") + 1
        spans = sum(int(n) - 1 for n in re.findall(r"\\multicolumn\{(\d+)\}", line))
        assert cells + spans == columns, line


def test_latex_is_a_valid_booktabs_fragment(board, tmp_path: Path) -> None:
    text = to_latex(board)
    check_latex(text)
    assert "\\textbf{" in text and "\\underline{" in text and "$\\uparrow$" in text
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex not installed: the fragment was checked by parsing only")
    (tmp_path / "table.tex").write_text(text)
    doc = "\\documentclass{article}\\usepackage{booktabs}\\usepackage[a2paper,landscape]{geometry}"
    (tmp_path / "doc.tex").write_text(doc + "\\begin{document}\\input{table.tex}\\end{document}\n")
    run = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]


def test_write_report_all_formats(grid: Path, tmp_path: Path) -> None:
    out = write_report(grid, tmp_path, options=ReportOptions(reference=True), plots=False)
    names = {p.name for p in out.written}
    assert {
        "leaderboard_thyroid.md",
        "leaderboard_thyroid.tex",
        "leaderboard_thyroid.csv",
        "report.html",
    } <= names
    assert "runs_thyroid.csv" in names
    lb = out.leaderboards[0]
    published = [r for r in lb.rows if r.reference]
    assert len(published) == 6 and not lb.best.loc[[r.key for r in published]].to_numpy().any()
    rlar = ("published", "+RLAR")
    assert lb.mean.loc[rlar, ("test", "recall")] == 0.61 and lb.mean.loc[rlar, ("external", "hd95")] == 205.78
    check_latex((tmp_path / "leaderboard_thyroid.tex").read_text())
    import pandas as pd

    csv = pd.read_csv(tmp_path / "leaderboard_thyroid.csv", index_col=[0, 1])
    assert csv.loc[("unet_small", "rlar"), "test/dice/mean"] == pytest.approx(
        lb.mean.loc[("unet_small", "rlar"), ("test", "dice")]
    )


def test_scalarisation_front_and_methods_beyond_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    thyroid_grid(runs)
    sweep = {(2.0, 0.5, 0.5): (0.9, 0.3), (0.5, 2.0, 0.5): (0.5, 0.7), (1.0, 1.0, 2.0): (0.82, 0.60)}
    for i, (w, (dice, f1)) in enumerate(sweep.items()):
        for fold in range(3):
            metrics = {"test": {"dice": dice + 0.001 * (fold - 1), "f1": f1, "score": (dice + f1) / 2}}
            task_args = {"lambda_seg": w[0], "lambda_cls": w[1], "lambda_clin": w[2]}
            write_run(
                runs,
                "thyroid",
                "vanilla",
                f"sw{i}{fold:06d}",
                metrics,
                fold=fold,
                folds=3,
                task_args=task_args,
            )
    board = build_leaderboard(collect_runs(runs).runs, "thyroid", ReportOptions())
    assert {label for _, label in board.mean.index} == {*METHODS, "single-task (seg)", "single-task (cls)"}
    results = raw(runs)
    mean = {
        m: (
            np.mean(list(values(results, m, "test", "dice").values())),
            np.mean(list(values(results, m, "test", "f1").values())),
        )
        for m in METHODS
    }
    points = [*sweep.values(), mean["vanilla"]]
    dom = lambda a, b: a[0] >= b[0] and a[1] >= b[1] and a != b  # noqa: E731
    front = [p for p in points if not any(dom(q, p) for q in points)]
    beyond = sorted(m for m in METHODS[1:] if any(dom(mean[m], f) for f in front))
    assert sorted(board.front.beyond) == beyond == ["mgda"]
    assert sorted(board.front.not_beyond) == ["pcgrad", "rlar"]
    assert sum(p.on_front for p in board.front.points) == len(front) == 3
    assert "beyond the front (Pareto-dominate a front point): mgda" in board.front.note()


def test_keys_a_run_marks_as_non_identity_do_not_split_a_setting(tmp_path) -> None:
    """Runs differing only in a key the run records as not changing its result (here a task's
    ``data.radiomics_workers``) are repetitions of one setting, not two rows."""
    import json

    from mtlbench.report.collect import collect_runs
    from tests.report.fixtures import write_run

    metrics = {"val": {"score": 0.5}}
    folders = [write_run(tmp_path, "twoshapes", "vanilla", f"r{seed}", metrics, seed=seed) for seed in (0, 1)]
    for workers, folder in zip((1, 4), folders):
        result = json.loads((folder / "result.json").read_text())
        result["config"]["data"]["radiomics_workers"] = workers
        result["non_identity_keys"] = [
            "output_dir",
            "train.progress",
            "data.cache_dir",
            "data.radiomics_workers",
        ]
        (folder / "result.json").write_text(json.dumps(result))
    settings = {run.setting for run in collect_runs(tmp_path).runs}
    assert len(settings) == 1
