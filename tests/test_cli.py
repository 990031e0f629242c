"""The command line as a user meets it: fast help, listing, and one clear line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import core_run_overrides


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
        (["--method", "rlar"], "no task given: name one with --task"),
        (["--task", "twoshape"], "unknown task 'twoshape'; did you mean 'twoshapes'"),
        (["--task", "twoshapes", "--method", "rlr"], "unknown method 'rlr'; did you mean 'rlar'"),
        (
            ["--task", "twoshapes", "--backbone", "unet_smal"],
            "unknown backbone 'unet_smal'; did you mean 'unet_small'",
        ),
        (
            ["--task", "twoshapes", "train.epohcs=2"],
            "unknown config key 'train.epohcs'; did you mean train.epochs",
        ),
        (["--task", "twoshapes", "train.epochs=two"], "train.epochs: expected an integer, got 'two'"),
        (["--task", "twoshapes", "data.num_val=x"], "data.num_val: expected an integer, got 'x'"),
        (["--task", "twoshapes", "data.num_externl=3"], "unknown config key 'data.num_externl'"),
        (["--task", "twoshapes", "--preset", "paper"], "unknown preset 'paper' for task 'twoshapes'"),
        (["--task", "twoshapes", "data.folds=3"], "task 'twoshapes' has fixed splits"),
        (["--task", "twoshapes", "method_args.lambda_adv=-1", "--method", "rlar"], "`lambda_adv = -1.0`"),
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


def test_run_ends_with_the_tasks_table_and_the_run_folder(tmp_path) -> None:
    result = mtlbench(
        "run", "--method", "vanilla", *core_run_overrides(tmp_path, **{"train.epochs": 1}), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    for header in ("Pixel acc.", "Accuracy"):  # the task's own summary columns
        assert header in result.stdout
    assert "val pixel_accuracy" in result.stderr  # the epoch line shows the task's metrics
    assert "run folder: " in result.stdout
    folder = Path(result.stdout.split("run folder: ")[1].split()[0])
    assert (tmp_path / folder / "result.json").is_file() or (folder / "result.json").is_file()


def test_task_families_add_their_own_commands(tmp_path) -> None:
    result = mtlbench("--help", cwd=tmp_path)
    assert "ablate-features" in result.stdout  # contributed by tasks/thyroid/cli.py
    result = mtlbench("data", "check", str(tmp_path), "--format", "nosuch", cwd=tmp_path)
    assert result.returncode == 2 and "unknown data-set format 'nosuch'" in result.stderr
    assert "thyroidxl" in result.stderr


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
