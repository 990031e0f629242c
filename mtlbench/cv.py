"""k-fold cross-validation: one run per fold with identical folds for every method, then mean ± std.

Each fold is an ordinary run (its own folder, resumable, in the index); the summary — mean and
sample standard deviation (ddof = 1, as "mean ± std over 3 folds" in the paper's tables) of every
scalar metric per split — is written atomically to ``<output_dir>/<task>/cv-<method>-<backbone>-<id>.json``
and listed in the index with ``"kind": "cv"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mtlbench import atomic
from mtlbench.config import RunConfig, config_hash
from mtlbench.errors import ConfigError
from mtlbench.results import cv_index_entry, update_index
from mtlbench.runner import RunOutcome, prepare_run, run_experiment
from mtlbench.trainer import scalars


@dataclass
class CVOutcome:
    path: Path
    summary: dict[str, Any]
    folds: list[RunOutcome]


def fold_config(config: RunConfig, folds: int, fold: int) -> RunConfig:
    return replace(config, data=replace(config.data, folds=folds, fold=fold))


def mean_std(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    n = len(finite)
    mean = sum(finite) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0 if n == 1 else math.nan
    return {"mean": mean, "std": std, "n": n}


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per split and scalar metric: mean, sample std and count over the folds."""
    splits: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for split, metrics in result["metrics"].items():
            for key, value in scalars(metrics).items():
                splits.setdefault(split, {}).setdefault(key, []).append(value)
    return {split: {k: mean_std(v) for k, v in metrics.items()} for split, metrics in splits.items()}


def run_cv(config: RunConfig, folds: int, progress: Any = None) -> CVOutcome:
    """Train every fold (resuming or reusing finished ones) and write the summary."""
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got folds={folds}")
    prepared = [prepare_run(fold_config(config, folds, k)) for k in range(folds)]  # validate all first
    outcomes = [run_experiment(p.config, progress=progress, prepared=p) for p in prepared]
    cfg = prepared[0].config
    resolved = cfg.to_dict()
    shared = {**resolved, "data": {**resolved["data"], "fold": None}}  # every fold's config, fold left out
    ident = config_hash(shared, cfg.non_identity_keys())
    path = Path(cfg.output_dir) / cfg.task / f"cv-{cfg.method}-{cfg.backbone}-{ident}.json"
    summary = {
        "kind": "cv",
        "task": cfg.task,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "folds": folds,
        "fold_runs": [o.folder.run_id for o in outcomes],
        "metrics": summarise([o.result for o in outcomes]),
        "config": shared,
    }
    atomic.write_json(path, summary)
    update_index(cfg.output_dir, cv_index_entry(summary, path, ident, cfg.preset))
    return CVOutcome(path, summary, outcomes)
