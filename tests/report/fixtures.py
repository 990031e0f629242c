"""Run folders written directly (result.json, config.yaml, metrics.jsonl), as `mtlbench run` writes them.

The report's tests read these instead of training: every number is known, so each table value can be
recomputed independently from the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

THYROID_METRICS = ("dice", "iou", "hd95", "precision", "recall", "f1")
SEG = ("dice", "iou", "hd95")
CLS = ("precision", "recall", "f1")


def write_run(
    runs: Path,
    task: str,
    method: str,
    run_id: str,
    metrics: dict[str, dict[str, Any]],
    *,
    seed: int = 0,
    fold: int | None = None,
    folds: int | None = None,
    backbone: str = "unet_small",
    task_args: dict[str, Any] | None = None,
    method_args: dict[str, Any] | None = None,
    step_time_s: float = 0.1,
    memory_mb: float = 500.0,
    log: list[dict[str, Any]] | None = None,
) -> Path:
    folder = runs / task / f"{method}-{backbone}-{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "task": task,
        "method": method,
        "backbone": backbone,
        "preset": "quick",
        "seed": seed,
        "output_dir": str(runs),
        "data": {"root": None, "cache_dir": "/tmp/x", "folds": folds, "fold": fold or 0, "fold_seed": 0},
        "train": {"epochs": 2, "progress": False},
        "task_args": task_args or {},
        "method_args": method_args or {},
        "backbone_args": {},
    }
    result = {
        "run_id": run_id,
        "task": task,
        "method": method,
        "backbone": backbone,
        "seed": seed,
        "metrics": metrics,
        "mean_step_time_s": step_time_s,
        "peak_memory_mb": memory_mb,
        "config": config,
    }
    (folder / "config.yaml").write_text(json.dumps({"run_id": run_id, **config}))
    (folder / "result.json").write_text(json.dumps(result))
    if log is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in log))
    return folder


def thyroid_grid(runs: Path, methods=("vanilla", "pcgrad", "rlar", "mgda"), folds: int = 3) -> list[Path]:
    """4 methods × 3 folds of thyroid results plus single-task seg and cls runs, random but seeded."""
    rng = np.random.default_rng(7)
    written = []
    quality = {m: 0.02 * i for i, m in enumerate(methods)}
    for method in methods:
        for fold in range(folds):
            metrics = {
                split: _thyroid_metrics(rng, quality[method], split) for split in ("val", "test", "external")
            }
            for split in metrics:
                metrics[split]["confusion"] = rng.integers(0, 9, (5, 5)).tolist()
            log = [
                {
                    "epoch": e,
                    "train": {"loss/seg": 1.0 / e, "loss/cls": 1.5 / e, "diag_cos/seg-cls": 0.1 * e}
                    | ({"rlar_penalty": 0.3 / e} if method == "rlar" else {}),
                    "val": {"score": 0.5 + 0.05 * e},
                }
                for e in (1, 2)
            ]
            written.append(
                write_run(
                    runs,
                    "thyroid",
                    method,
                    f"{method[:3]}{fold:07d}",
                    metrics,
                    fold=fold,
                    folds=folds,
                    step_time_s=0.1 * (1 + quality[method] * 10) + 0.001 * fold,
                    memory_mb=500 + 100 * quality[method],
                    log=log,
                )
            )
    for name, keep, task_args in (
        ("seg", SEG, {"tasks": ["seg"]}),
        ("cls", CLS, {"tasks": ["cls"], "clinical_guidance": False}),
    ):
        for fold in range(folds):
            metrics = {}
            for split in ("val", "test", "external"):
                full = _thyroid_metrics(rng, 0.01, split)
                metrics[split] = {k: full[k] for k in keep} | {
                    "score": full["dice" if name == "seg" else "f1"]
                }
            written.append(
                write_run(
                    runs,
                    "thyroid",
                    "vanilla",
                    f"st{name}{fold:05d}",
                    metrics,
                    fold=fold,
                    folds=folds,
                    task_args=task_args,
                )
            )
    return written


def _thyroid_metrics(rng: np.random.Generator, quality: float, split: str) -> dict[str, float]:
    shift = {"val": 0.0, "test": -0.02, "external": -0.2}[split]
    base = {"dice": 0.8, "iou": 0.7, "precision": 0.6, "recall": 0.58, "f1": 0.57}
    values = {k: round(float(v + shift + quality + rng.normal(0, 0.01)), 6) for k, v in base.items()}
    values["hd95"] = round(float(40 - 100 * quality - 50 * shift + rng.normal(0, 2)), 4)
    values["score"] = (values["dice"] + values["f1"]) / 2
    return values
