"""The command line as a user meets it: fast help, listing, and one clear line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import tiny_run_overrides


def mtlbench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MTLBENCH_CACHE": str(cwd / "cache"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mtlbench.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_does_not_import_torch(tmp_path) -> None:
    code = "import sys; from mtlbench.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    result = mtlbench("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "list", "config"):
        assert command in result.stdout


def test_list_shows_descriptions_without_torch(tmp_path) -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from mtlbench.cli import app; "
        "r = CliRunner().invoke(app, ['list']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules; print(r.output)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    for name in ("thyroid", "rlar", "vanilla", "unet_small", "nnunet_plain", "timm"):
        assert name in out.stdout
    assert "Representation-level adversarial regulariser" in out.stdout


def test_config_show_prints_resolved_yaml(tmp_path) -> None:
    result = mtlbench(
        "config", "show", "--task", "thyroid", "--method", "rlar", "method_args.lambda_adv=0.25", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# run id: ")
    assert "lambda_adv: 0.25" in result.stdout and "representation: bottleneck" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--task", "thyriod"], "unknown task 'thyriod'; did you mean 'thyroid'"),
        (["--method", "rlr"], "unknown method 'rlr'; did you mean 'rlar'"),
        (["--backbone", "unet_smal"], "unknown backbone 'unet_smal'; did you mean 'unet_small'"),
        (["train.epohcs=2"], "unknown config key 'train.epohcs'; did you mean train.epochs"),
        (["train.epochs=two"], "train.epochs: expected an integer, got 'two'"),
        (
            ["data.root=/no/such/ThyroidXL", "data.format=phantom"],
            "data.root '/no/such/ThyroidXL' does not exist",
        ),
        (["method_args.lambda_adv=-1"], "`lambda_adv = -1.0`"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args: list[str], fragment: str) -> None:
    result = mtlbench("run", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert list(tmp_path.iterdir()) == [], "bad input must not write anything"


def test_run_ends_with_a_table_and_the_run_folder(tmp_path) -> None:
    result = mtlbench(
        "run",
        "--task",
        "thyroid",
        "--method",
        "vanilla",
        *tiny_run_overrides(tmp_path, **{"train.epochs": 1}),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for header in ("Dice", "IoU", "HD95", "Precision", "Recall", "F1"):
        assert header in result.stdout
    assert "run folder: " in result.stdout
    folder = Path(result.stdout.split("run folder: ")[1].split()[0])
    assert (tmp_path / folder / "result.json").is_file() or (folder / "result.json").is_file()


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


def test_plot_toy_draws_each_method_and_skips_representation_methods(tmp_path) -> None:
    out = tmp_path / "toy.png"
    result = mtlbench(
        "plot",
        "toy",
        "--methods",
        "vanilla,rlar",
        "--steps",
        "20",
        "--starts",
        "cagrad",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.stat().st_size > 1000
    assert (
        "rlar" in result.stdout + result.stderr and "shared representation" in result.stdout + result.stderr
    )
