"""The thyroid paper's Tables 3–5 in its layout, recomputed from the raw files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtlbench.report.build import write_report
from mtlbench.report.collect import collect_runs
from mtlbench.report.paper_tables import CLS_METRICS, feature_ablation, layer_ablation
from mtlbench.report.render import to_markdown
from tests.report.fixtures import thyroid_grid, write_run
from tests.report.test_tables import check_latex

FEATURES = ("circularity", "ellipticity", "aspect_ratio")


def ablation_runs(runs: Path) -> None:
    folders = thyroid_grid(runs)
    rng = np.random.default_rng(3)
    for layer in ("last", "mid", "mean_last3"):
        for fold in range(3):
            metrics = {
                s: {m: float(rng.uniform(0.3, 0.9)) for m in ("precision", "recall", "f1", "dice", "iou")}
                | {"hd95": float(rng.uniform(20, 60))}
                for s in ("val", "test", "external")
            }
            write_run(
                runs,
                "thyroid",
                "rlar",
                f"{layer[:3]}{fold:07d}",
                metrics,
                fold=fold,
                folds=3,
                method_args={"representation": layer},
            )
    for folder in [f for f in folders if f.name.startswith("vanilla-unet_small-van")]:
        for split in ("test", "external"):
            rows = [
                {"feature": f, **{f"delta_{m}": float(rng.normal(0, 0.01)) for m in CLS_METRICS}}
                for f in FEATURES
            ]
            (folder / f"feature_ablation_{split}.json").write_text(json.dumps({"split": split, "rows": rows}))


def test_tables_3_to_5(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ablation_runs(runs)
    records = collect_runs(runs).runs
    table3 = layer_ablation(records, CLS_METRICS)
    assert [label for _, label in table3.mean.index] == [
        "Last Encoder Layer",
        "Mid Encoder Layer",
        "Mean (Last 3 Layers)",
        "Bottleneck (default)",
    ]
    assert table3.columns == [(s, m) for s in ("test", "external") for m in CLS_METRICS]
    raw = [json.loads(p.read_text()) for p in runs.glob("thyroid/rlar-*/result.json")]
    mid = [
        r["metrics"]["external"]["recall"]
        for r in raw
        if r["config"]["method_args"].get("representation") == "mid"
    ]
    assert table3.mean.loc[("unet_small", "Mid Encoder Layer"), ("external", "recall")] == pytest.approx(
        np.mean(mid)
    )
    col = table3.mean[("test", "f1")]
    assert table3.best[("test", "f1")].idxmax() == col.idxmax()
    markdown = to_markdown(table3)
    assert markdown.splitlines()[2].startswith("| Last Encoder Layer")
    assert "| Δm%" not in markdown and "mean rank" not in markdown

    table4 = layer_ablation(records, ("dice", "iou", "hd95"))
    hd95 = table4.mean[("test", "hd95")]
    assert table4.best[("test", "hd95")].idxmax() == hd95.idxmin()  # lower is better

    table5 = feature_ablation(records)
    deltas = {}
    for path in runs.glob("thyroid/*/feature_ablation_test.json"):
        for row in json.loads(path.read_text())["rows"]:
            deltas.setdefault(row["feature"], []).append(row["delta_f1"])
    assert len(deltas["ellipticity"]) == 3
    for feature, values in deltas.items():
        key = ("Δ vs all features", feature)
        assert table5.mean.loc[key, ("test", "f1")] == pytest.approx(np.mean(values))
        assert table5.std.loc[key, ("test", "f1")] == pytest.approx(np.std(values, ddof=1))
    worst = min(deltas, key=lambda f: np.mean(deltas[f]))
    assert table5.best[("test", "f1")].idxmax() == ("Δ vs all features", worst)  # largest degradation in bold

    out = write_report(runs, tmp_path / "report", formats=("md", "tex"), plots=False)
    names = {p.name for p in out.written}
    assert {"table3_thyroid.md", "table4_thyroid.tex", "table5_thyroid.md"} <= names
    for name in ("table3_thyroid.tex", "table4_thyroid.tex", "table5_thyroid.tex"):
        check_latex((tmp_path / "report" / name).read_text())
