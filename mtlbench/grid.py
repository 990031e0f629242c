"""Experiment grids: every (method, backbone, seed, fold) of one task, each an ordinary resumable run.

A grid is expanded into cells before anything runs; every cell's configuration is resolved and
validated up front, and its run id (the hash of the resolved configuration) names its folder, so a
finished cell is recognised and skipped, and an interrupted one resumes from its last epoch. A cell
that raises is recorded in the index with its error (``"kind": "failed"``, replaced by the result
once it succeeds) and the grid goes on. Runs started elsewhere from :func:`emit_commands` (a SLURM
array, submitit) write into the same results folder; the index is updated under a file lock
(:func:`mtlbench.results.update_index`).

Single-task baselines (for Δm%) need a task-specific way to train one task alone; each task
declares it (``TaskDefinition.single_task_baselines``, read by :func:`single_task_settings`).
"""

from __future__ import annotations

import shlex
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.config import ConfigError, RunConfig, parse_overrides


@dataclass(frozen=True)
class SingleTaskSetting:
    """How to train one task of a family alone: overrides, and the metrics that baseline provides."""

    name: str
    overrides: tuple[str, ...]
    metrics: tuple[str, ...]


def single_task_settings(task: str) -> tuple[SingleTaskSetting, ...]:
    """How each task of family ``task`` is trained alone, as the task declares it
    (``TaskDefinition.single_task_baselines``); empty for an unregistered or silent task."""
    from mtlbench.registry import TASKS, UnknownNameError

    try:
        declared = TASKS.get(task).obj.single_task_baselines
    except UnknownNameError:
        return ()
    return tuple(
        SingleTaskSetting(name, tuple(overrides), tuple(metrics))
        for name, (overrides, metrics) in declared.items()
    )


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def single_task_variant(task: str, config: dict[str, Any]) -> SingleTaskSetting | None:
    """The single-task setting a resolved run configuration matches, if any."""
    for setting in single_task_settings(task):
        wanted = _flatten(parse_overrides(list(setting.overrides)))
        if all(_same(_lookup(config, key), _value(value)) for key, value in wanted.items()):
            return setting
    return None


def _value(text: Any) -> Any:
    """An override's value as YAML reads it (``[seg]`` → ``["seg"]``, ``false`` → ``False``)."""
    import yaml

    return yaml.safe_load(text) if isinstance(text, str) else text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


@dataclass
class GridCell:
    """One run of the grid: its command-line description and its resolved configuration."""

    method: str
    backbone: str
    seed: int
    fold: int | None
    folds: int | None
    variant: str | None  # the single-task setting's name, None for a multitask run
    overrides: tuple[str, ...]
    config: RunConfig
    status: str = "pending"  # pending | partial (has a checkpoint) | finished | failed (last attempt)
    error: str | None = None

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def label(self) -> str:
        parts = [self.method, self.backbone, f"seed={self.seed}"]
        if self.fold is not None:
            parts.append(f"fold={self.fold}")
        if self.variant:
            parts.append(self.variant if self.variant.startswith("w=") else f"single-task={self.variant}")
        return " ".join(parts)


@dataclass
class GridSpec:
    task: str
    methods: Sequence[str]
    backbones: Sequence[str] = ("unet_small",)
    seeds: Sequence[int] = (0,)
    folds: int | None = None
    overrides: Sequence[str] = ()
    config_file: Path | None = None
    preset: str | None = None
    with_single_task: bool = False
    #: Extra vanilla cells: (label, overrides), e.g. the task-weight vectors of a scalarisation sweep.
    vanilla_variants: Sequence[tuple[str, tuple[str, ...]]] = ()


@dataclass
class GridOutcome:
    cells: list[GridCell]
    ran: list[GridCell] = field(default_factory=list)
    skipped: list[GridCell] = field(default_factory=list)
    failed: list[GridCell] = field(default_factory=list)


def parse_list(text: str | None, what: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{what}: give at least one comma-separated value")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what}: duplicate values in {text!r}")
    return items


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in parse_list(text, "--seeds")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None


def expand_grid(spec: GridSpec) -> list[GridCell]:
    """Every cell of the grid with its resolved, validated configuration (nothing is written)."""
    from mtlbench.config import resolve_config
    from mtlbench.resolve import resolve_run

    if spec.folds is not None and spec.folds < 2:
        raise ConfigError(f"--folds needs at least 2 folds, got {spec.folds}")
    baselines = single_task_settings(spec.task) if spec.with_single_task else ()
    if spec.with_single_task and not baselines:
        raise ConfigError(
            f"task {spec.task!r} declares no single-task settings (single_task_baselines); "
            "run its single-task baselines as ordinary runs"
        )
    plans: list[tuple[str, str | None, tuple[str, ...]]] = [(m, None, ()) for m in spec.methods]
    plans += [("vanilla", s.name, s.overrides) for s in baselines]
    plans += [("vanilla", label, tuple(overrides)) for label, overrides in spec.vanilla_variants]
    fold_list: list[int | None] = list(range(spec.folds)) if spec.folds else [None]
    cells = []
    for method, variant, variant_overrides in plans:
        for backbone in spec.backbones:
            for seed in spec.seeds:
                for fold in fold_list:
                    extra = [f"seed={seed}"]
                    if fold is not None:
                        extra += [f"data.folds={spec.folds}", f"data.fold={fold}"]
                    overrides = (*spec.overrides, *variant_overrides, *extra)
                    config = resolve_config(
                        overrides=list(overrides),
                        config_file=spec.config_file,
                        preset=spec.preset,
                        task=spec.task,
                        method=method,
                        backbone=backbone,
                    )
                    resolved = resolve_run(config)
                    cells.append(
                        GridCell(
                            method, backbone, seed, fold, spec.folds, variant, overrides, resolved.config
                        )
                    )
    _check_folds(cells)
    first: dict[str, GridCell] = {}
    for cell in cells:
        first.setdefault(cell.run_id, cell)  # the same configuration twice is one run
    unique = list(first.values())
    refresh_status(unique)
    return unique


def _check_folds(cells: list[GridCell]) -> None:
    from mtlbench.registry import TASKS

    if cells and cells[0].folds is not None and not TASKS.get(cells[0].config.task).obj.supports_folds:
        raise ConfigError(f"task {cells[0].config.task!r} has fixed splits; use --seeds instead of --folds")


def refresh_status(cells: list[GridCell]) -> None:
    """Mark every cell finished, partial, failed (its last recorded attempt) or pending."""
    from mtlbench.results import RunFolder, read_index

    failures: dict[str, str] = {}
    output_dirs = {c.config.output_dir for c in cells}
    for output_dir in output_dirs:
        try:
            entries = read_index(output_dir)
        except RuntimeError:
            entries = []
        failures.update({e["run_id"]: e.get("error", "") for e in entries if e.get("kind") == "failed"})
    for cell in cells:
        folder = RunFolder.for_config(cell.config)
        if folder.is_finished():
            cell.status, cell.error = "finished", None
        elif cell.run_id in failures:
            cell.status, cell.error = "failed", failures[cell.run_id]
        elif folder.has_checkpoint():
            cell.status = "partial"
        else:
            cell.status = "pending"


def record_failure(cell: GridCell, error: BaseException) -> None:
    """Put the failure in the index (replaced by the result once the cell succeeds) and the folder."""
    from mtlbench import atomic
    from mtlbench.results import RunFolder, update_index

    folder = RunFolder.for_config(cell.config)
    message = f"{type(error).__name__}: {error}"
    cell.status, cell.error = "failed", message
    atomic.write_text(folder.root / "error.txt", "".join(traceback.format_exception(error)))
    update_index(
        cell.config.output_dir,
        {
            "run_id": cell.run_id,
            "kind": "failed",
            "task": cell.config.task,
            "method": cell.method,
            "backbone": cell.backbone,
            "seed": cell.seed,
            "fold": cell.fold,
            "path": str(folder.root),
            "error": message,
        },
    )


def run_grid(
    cells: list[GridCell],
    progress: Any = None,
    on_cell: Callable[[GridCell, int, int, str], None] | None = None,
) -> GridOutcome:
    """Train every unfinished cell in order; failures are recorded and the grid goes on.

    ``on_cell(cell, i, n, phase)`` is called with phase ``"start"`` before each unfinished cell (``i``
    counts from 1) and ``"end"`` after it, when ``cell.status`` is ``finished`` or ``failed``.
    KeyboardInterrupt stops the grid (the running cell resumes next time).
    """
    from mtlbench.runner import prepare_run, run_experiment

    outcome = GridOutcome(cells)
    total = len(cells)
    for i, cell in enumerate(cells, 1):
        if cell.status == "finished":
            outcome.skipped.append(cell)
            continue
        if on_cell is not None:
            on_cell(cell, i, total, "start")
        try:
            prepared = prepare_run(cell.config)
            run_experiment(cell.config, progress=progress, prepared=prepared)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed run is a result of the grid, not the end of it
            record_failure(cell, exc)
            outcome.failed.append(cell)
        else:
            cell.status, cell.error = "finished", None
            outcome.ran.append(cell)
        if on_cell is not None:
            on_cell(cell, i, total, "end")
    return outcome


def weight_vectors(n_tasks: int, weights: str, step: float = 0.25, seed: int = 0) -> list[tuple[float, ...]]:
    """Task-weight vectors summing to ``n_tasks`` (so equal weights are vanilla's λ_t = 1).

    ``grid``: the simplex lattice with spacing ``step`` (vertices included: one task alone);
    ``dirichlet:N``: N draws from a flat Dirichlet, seeded.
    """
    import itertools

    import numpy as np

    if weights == "grid":
        k = round(1 / step)
        if not 0 < step <= 1 or abs(k * step - 1) > 1e-9:
            raise ConfigError(f"--step must divide 1, got {step}")
        points = [c for c in itertools.product(range(k + 1), repeat=n_tasks) if sum(c) == k]
        return [tuple(round(n_tasks * c / k, 6) for c in point) for point in points]
    if weights.startswith("dirichlet:"):
        try:
            count = int(weights.split(":", 1)[1])
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(f"--weights dirichlet:N needs N >= 1, got {weights!r}")
        draws = np.random.default_rng(seed).dirichlet(np.ones(n_tasks), count)
        return [tuple(round(float(n_tasks * w), 6) for w in row) for row in draws]
    raise ConfigError(f"--weights must be grid or dirichlet:N, got {weights!r}")


def sweep_task_names(task: str, overrides: Sequence[str], preset: str | None = None) -> tuple[str, ...]:
    """The task's loss names, checking that each has a weight setting ``task_args.lambda_<name>``.

    That is how the known tasks expose their task weights; a task without them cannot be swept.
    """
    import dataclasses

    from mtlbench.config import resolve_config
    from mtlbench.resolve import resolve_run
    from mtlbench.runner import default_cache_dir

    resolved = resolve_run(resolve_config(overrides=list(overrides), preset=preset, task=task))
    cfg = resolved.config
    names = resolved.task_entry.obj(resolved.task_params, cfg.data, cfg.seed, default_cache_dir()).task_names
    fields = {f.name for f in dataclasses.fields(resolved.task_params)}
    missing = [f"lambda_{n}" for n in names if f"lambda_{n}" not in fields]
    if missing:
        raise ConfigError(
            f"task {task!r} has no task_args {', '.join(missing)}: its task weights cannot be swept"
        )
    return tuple(names)


def sweep_variants(
    names: Sequence[str], vectors: list[tuple[float, ...]]
) -> list[tuple[str, tuple[str, ...]]]:
    """(label, overrides) per weight vector: ``task_args.lambda_<name>=w`` for every task loss."""
    return [
        (
            "w=" + ",".join(f"{w:g}" for w in vector),
            tuple(f"task_args.lambda_{n}={w}" for n, w in zip(names, vector)),
        )
        for vector in vectors
    ]


def emit_commands(spec: GridSpec, cells: list[GridCell]) -> list[str]:
    """One ``mtlbench run`` command per unfinished cell (for a scheduler's job array)."""
    commands = []
    for cell in cells:
        if cell.status == "finished":
            continue
        words = ["mtlbench", "run", "--task", spec.task, "--method", cell.method, "--backbone", cell.backbone]
        if spec.preset:
            words += ["--preset", spec.preset]
        if spec.config_file:
            words += ["--config", str(spec.config_file)]
        words += list(cell.overrides)
        commands.append(shlex.join(words))
    return commands
