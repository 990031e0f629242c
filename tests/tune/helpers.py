"""Tiny study settings on the example plugin's ``twoshapes`` task (a trial trains in about a second)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner


def tiny_tune_overrides(tmp_path: Path, **extra: Any) -> list[str]:
    settings: dict[str, Any] = {
        "task": "twoshapes",
        "backbone": "tiny_cnn",
        "backbone_args.width": 4,
        "output_dir": tmp_path / "runs",
        "data.cache_dir": tmp_path / "cache",
        "data.image_size": 16,
        "data.num_train": 8,
        "data.num_val": 8,
        "data.num_test": 8,
        "train.epochs": 2,
        "train.steps_per_epoch": 1,
        "train.batch_size": 4,
        "train.eval_batch_size": 8,
        "train.diagnostics_every": 0,
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


def invoke(*args: str) -> Any:
    from mtlbench.cli import app

    return CliRunner().invoke(app, ["tune", *args])


def worker(tmp_path: Path, *args: str, log: str) -> subprocess.Popen[str]:
    """A ``mtlbench tune`` worker process (its output in ``tmp_path/<log>``)."""
    env = {**os.environ, "MTLBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = open(tmp_path / log, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "mtlbench.cli", "tune", *args],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def index_entries(runs: Path) -> dict[str, dict[str, Any]]:
    return {e["run_id"]: e for e in json.loads((runs / "index.json").read_text())}
