"""Grids: expansion, dry run, emitted commands, failures, interruption and resume, concurrent index."""

from __future__ import annotations

import json
import multiprocessing
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mtlbench.runner
from mtlbench.cli import app
from mtlbench.grid import GridSpec, emit_commands, expand_grid, run_grid, single_task_variant
from mtlbench.results import read_index, update_index
from tests.tiny import core_run_overrides


def spec(tmp_path: Path, **kw) -> GridSpec:
    overrides = core_run_overrides(
        tmp_path,
        **{
            "train.epochs": 1,
            "train.steps_per_epoch": 1,
            "data.num_train": 8,
            "data.num_val": 4,
            "data.num_test": 4,
            "train.diagnostics_every": 0,
        },
    )
    return GridSpec(
        **{
            "task": "twoshapes",
            "methods": ("vanilla", "pcgrad"),
            "seeds": (0, 1),
            "overrides": overrides,
            **kw,
        }
    )


def test_expand_dry_run_and_emitted_commands(tmp_path: Path) -> None:
    s = spec(tmp_path, with_single_task=True)
    cells = expand_grid(s)
    assert len(cells) == (2 + 3) * 2 and all(c.status == "pending" for c in cells)
    assert len({c.run_id for c in cells}) == len(cells)
    assert [c.variant for c in cells[-2:]] == ["area", "area"]
    assert single_task_variant("twoshapes", cells[-1].config.to_dict()).name == "area"
    commands = emit_commands(s, cells)
    assert len(commands) == len(cells)
    words = shlex.split(commands[0])
    assert words[:8] == [
        "mtlbench",
        "run",
        "--task",
        "twoshapes",
        "--method",
        "vanilla",
        "--backbone",
        "unet_small",
    ]
    assert "seed=0" in words
    result = CliRunner().invoke(
        app,
        [
            "grid",
            "--task",
            "twoshapes",
            "--methods",
            "vanilla,pcgrad",
            "--seeds",
            "0,1",
            "--dry-run",
            *s.overrides,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 runs, 0 finished, 4 to run" in result.output
    emitted = CliRunner().invoke(
        app, ["grid", "--task", "twoshapes", "--methods", "vanilla", "--emit-commands", *s.overrides]
    )
    assert emitted.exit_code == 0 and emitted.output.count("mtlbench run") == 1
    bad = CliRunner().invoke(app, ["grid", "--task", "twoshapes", "--folds", "3", "--dry-run", *s.overrides])
    assert bad.exit_code == 2 and "fixed splits" in bad.output


def test_failure_interruption_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = spec(tmp_path)
    real = mtlbench.runner.run_experiment
    calls: list[str] = []

    def first_attempt(config, **kw):
        calls.append(config.run_id())
        if len(calls) == 2:
            raise RuntimeError("boom")
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(config, **kw)

    monkeypatch.setattr(mtlbench.runner, "run_experiment", first_attempt)
    cells = expand_grid(s)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells)
    assert [c.status for c in cells] == ["finished", "failed", "pending", "pending"]
    entries = read_index(tmp_path / "runs")
    failed = [e for e in entries if e.get("kind") == "failed"]
    assert len(entries) == 2 and failed[0]["run_id"] == cells[1].run_id and "boom" in failed[0]["error"]
    first_result = (
        Path(entries[0]["path"] if "kind" not in entries[0] else entries[1]["path"]) / "result.json"
    )
    stamp = first_result.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(
        mtlbench.runner,
        "run_experiment",
        lambda config, **kw: calls.append(config.run_id()) or real(config, **kw),
    )
    again = expand_grid(s)
    assert [c.status for c in again] == ["finished", "failed", "pending", "pending"]
    outcome = run_grid(again)
    assert calls == [c.run_id for c in again[1:]]  # the finished run is not trained again
    assert len(outcome.skipped) == 1 and len(outcome.ran) == 3 and not outcome.failed
    assert first_result.stat().st_mtime_ns == stamp
    entries = read_index(tmp_path / "runs")
    assert sorted(e["run_id"] for e in entries) == sorted(c.run_id for c in again)  # no duplicates
    assert all("kind" not in e and "metrics" in e for e in entries)
    assert [c.status for c in expand_grid(s)] == ["finished"] * 4


def _hammer(output_dir: str, worker: int) -> None:
    for i in range(15):
        update_index(output_dir, {"run_id": f"w{worker}-{i}", "task": "t", "method": "m"})


def test_concurrent_writers_land_in_one_index(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hammer, args=(str(tmp_path), w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
    assert all(p.exitcode == 0 for p in workers)
    entries = json.loads((tmp_path / "index.json").read_text())
    assert sorted(e["run_id"] for e in entries) == sorted(f"w{w}-{i}" for w in range(4) for i in range(15))


def test_sweep_weight_vectors_and_dry_run(tmp_path: Path) -> None:
    from mtlbench.grid import weight_vectors

    assert weight_vectors(2, "grid", 0.25) == [(0.0, 2.0), (0.5, 1.5), (1.0, 1.0), (1.5, 0.5), (2.0, 0.0)]
    assert len(weight_vectors(3, "grid", 0.25)) == 15
    draws = weight_vectors(3, "dirichlet:4")
    assert len(draws) == 4 and all(abs(sum(w) - 3) < 1e-5 and min(w) >= 0 for w in draws)
    overrides = spec(tmp_path).overrides
    result = CliRunner().invoke(
        app, ["sweep", "--task", "twoshapes", "--weights", "grid", "--step", "0.5", "--dry-run", *overrides]
    )
    assert result.exit_code == 0, result.output
    assert "6 runs, 0 finished, 6 to run" in result.output and "w=1.5,0,1.5" in result.output
    emitted = CliRunner().invoke(
        app, ["sweep", "--task", "twoshapes", "--weights", "dirichlet:2", "--emit-commands", *overrides]
    )
    lines = emitted.output.strip().splitlines()
    assert len(lines) == 2 and all(
        "task_args.lambda_mask=" in line and "--method vanilla" in line for line in lines
    )
    bad = CliRunner().invoke(
        app, ["sweep", "--task", "twoshapes", "--weights", "dirichlet:x", "--dry-run", *overrides]
    )
    assert bad.exit_code == 2 and "error: --weights dirichlet:N" in bad.output


def test_grid_command_trains_then_skips(tmp_path: Path) -> None:
    overrides = [o for o in spec(tmp_path).overrides if not o.startswith("train.progress")] + [
        "train.progress=true"
    ]
    args = ["grid", "--task", "twoshapes", "--methods", "vanilla", *overrides]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "grid: 1 trained, 0 already finished, 0 failed" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "grid: 0 trained, 1 already finished, 0 failed" in second.output
