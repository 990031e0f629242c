"""The thyroid family's commands: ``data check`` of its layouts, ``ablate-features``, ``cv`` on its folds."""

from __future__ import annotations

from tests.test_cli import mtlbench
from tests.tiny import tiny_run_overrides


def test_data_check_lists_counts_and_problems(tmp_path) -> None:
    from tests.tasks.thyroid.readers.fixtures import make_thyroidxl

    clean = make_thyroidxl(tmp_path / "clean")
    result = mtlbench("data", "check", str(clean), "--format", "thyroidxl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TR" in result.stdout and "train" in result.stdout
    broken = make_thyroidxl(tmp_path / "broken", corrupt_image=True)
    result = mtlbench("data", "check", str(broken), "--format", "thyroidxl", cwd=tmp_path)
    assert result.returncode == 3
    assert ".png" in result.stdout  # the problem names the file
    result = mtlbench("data", "check", str(tmp_path / "nowhere"), "--format", "thyroidxl", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_ablate_features_writes_table5_rows(tmp_path) -> None:
    import json

    from mtlbench.config import resolve_config
    from mtlbench.runner import run_experiment

    cfg = resolve_config(
        tiny_run_overrides(tmp_path, **{"train.epochs": 1, "data.num_external": 0}), method="rlar"
    )
    folder = run_experiment(cfg).folder.root
    result = mtlbench("ablate-features", str(folder), "--split", "test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((folder / "feature_ablation_test.json").read_text())["rows"]
    assert len(rows) == 13 and rows[0]["feature"] == "circularity"
    assert all("delta_f1" in row for row in rows)
    bad = mtlbench("ablate-features", str(folder), "--split", "external", cwd=tmp_path)
    assert bad.returncode == 2 and "split 'external' is not available" in bad.stderr


def test_cv_command_prints_mean_and_std(tmp_path) -> None:
    overrides = tiny_run_overrides(tmp_path, **{"train.epochs": 1, "data.num_external": 0})
    result = mtlbench("cv", "--method", "vanilla", "--folds", "2", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2-fold CV" in result.stdout and "±" in result.stdout and "summary: " in result.stdout
