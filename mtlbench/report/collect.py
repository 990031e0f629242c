"""Read the finished runs of a results folder, and name every folder that cannot be read.

Reports are built from the run folders' ``result.json`` files, not from ``index.json``: the folders
are the record (the index is a convenience that a corrupt entry must not take down). A folder whose
result is missing, half-written, or not an mtlbench result is listed as a :class:`Problem` with its
path and the reason, and skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.config import config_hash
from mtlbench.grid import single_task_variant

#: Keys that do not make two runs different settings: the repetition (seed, fold) and what does
#: not change what a run computes.
#: What repeats one setting: the seed and the fold; plus the keys that never change a run's result
#: (the run records them, ``non_identity_keys``; older runs fall back to the core's).
REPETITION_KEYS = ("seed", "data.fold")
FALLBACK_NON_IDENTITY = ("output_dir", "train.progress", "data.cache_dir", "data.num_workers")
REQUIRED_KEYS = ("run_id", "task", "method", "backbone", "metrics", "config")
#: A file ``mtlbench report`` leaves in its output folder, so that a report inside the results folder
#: is not read as a task or run folder.
REPORT_MARKER = ".mtlbench-report"


@dataclass
class Problem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class RunRecord:
    """One finished run as the report needs it."""

    path: Path
    run_id: str
    task: str
    method: str
    backbone: str
    seed: int
    fold: int | None
    setting: str  # hash of the configuration without seed and fold: the runs averaged into one row
    config: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # split -> scalar metric -> value
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # split -> matrix, if any
    mean_step_time_s: float = math.nan
    peak_memory_mb: float = math.nan
    variant: str | None = None  # single-task setting name
    #: configuration keys that do not make a different setting (seed, fold, non-identity keys)
    ignored_keys: tuple[str, ...] = REPETITION_KEYS

    @property
    def repetition(self) -> tuple[int, int | None]:
        return (self.seed, self.fold)

    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"


@dataclass
class Collection:
    runs: list[RunRecord]
    problems: list[Problem]
    unfinished: list[Path]


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def parse_result(path: Path, result: Any) -> RunRecord:
    """A :class:`RunRecord` from a parsed ``result.json``; ValueError says what is wrong with it."""
    if not isinstance(result, dict):
        raise ValueError("result.json is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"not an mtlbench result (missing {', '.join(missing)})")
    if not isinstance(result["metrics"], dict) or not all(
        isinstance(m, dict) for m in result["metrics"].values()
    ):
        raise ValueError("`metrics` is not a mapping of split -> metrics")
    config = result["config"]
    if not isinstance(config, dict):
        raise ValueError("`config` is not a mapping")
    data = config.get("data") or {}
    fold = data.get("fold") if data.get("folds") else None
    ignored = (*REPETITION_KEYS, *result.get("non_identity_keys", FALLBACK_NON_IDENTITY))
    metrics = {split: _scalars(m) for split, m in result["metrics"].items()}
    confusion = {
        split: m["confusion"]
        for split, m in result["metrics"].items()
        if isinstance(m.get("confusion"), list)
    }
    return RunRecord(
        path=path,
        run_id=str(result["run_id"]),
        task=str(result["task"]),
        method=str(result["method"]),
        backbone=str(result["backbone"]),
        seed=int(config.get("seed", result.get("seed", 0))),
        fold=None if fold is None else int(fold),
        setting=config_hash(config, ignored),
        ignored_keys=ignored,
        config=config,
        metrics=metrics,
        confusion=confusion,
        mean_step_time_s=float(result.get("mean_step_time_s", math.nan)),
        peak_memory_mb=float(result.get("peak_memory_mb", math.nan)),
        variant=(lambda s: s.name if s else None)(single_task_variant(str(result["task"]), config)),
    )


def collect_runs(runs_dir: str | Path, task: str | None = None, exclude: tuple[Path, ...] = ()) -> Collection:
    """Every finished run under ``runs_dir/<task>/<run folder>/``; problems are listed, never raised.

    ``exclude``: folders that are not tasks (the report's own output folder).
    """
    root = Path(runs_dir)
    skip = {p.resolve() for p in exclude}
    runs: list[RunRecord] = []
    problems: list[Problem] = []
    unfinished: list[Path] = []
    if not root.is_dir():
        return Collection(runs, [Problem(root, "results folder does not exist")], unfinished)
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if (task is not None and task_dir.name != task) or task_dir.resolve() in skip:
            continue
        if (task_dir / REPORT_MARKER).exists():
            continue
        for folder in sorted(
            p for p in task_dir.iterdir() if p.is_dir() and not (p / REPORT_MARKER).exists()
        ):
            result_path = folder / "result.json"
            if not result_path.is_file():
                if (folder / "config.yaml").is_file():
                    unfinished.append(folder)
                else:
                    problems.append(Problem(folder, "not a run folder (no config.yaml, no result.json)"))
                continue
            try:
                record = parse_result(folder, json.loads(result_path.read_text()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(Problem(folder, f"result.json cannot be read: {exc}"))
                continue
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(Problem(folder, f"result.json: {exc}"))
                continue
            if record.task != task_dir.name:
                problems.append(
                    Problem(folder, f"result of task {record.task!r} in folder of {task_dir.name!r}")
                )
                continue
            runs.append(record)
    index = root / "index.json"
    if index.is_file():
        try:
            json.loads(index.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(
                Problem(index, f"index cannot be read ({exc}); the run folders were read instead")
            )
    return Collection(runs, problems, unfinished)
