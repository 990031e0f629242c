"""``mtlbench tune show``: a study's best trials (or Pareto front), parameter importances, optimisation
history, as tables and as plots (Optuna's matplotlib visualisation), and the command that re-runs the
best configuration."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.errors import ConfigError
from mtlbench.tune.storage import StorageSpec, open_storage, parse_storage
from mtlbench.tune.study import META_KEY


@dataclass
class StudyReport:
    name: str
    storage: str
    directions: list[str]
    objectives: list[str]
    counts: dict[str, int]
    best: list[dict[str, Any]]  # single objective: the top trials; several: the Pareto front
    importances: dict[str, dict[str, float]] | None
    importance_note: str | None
    history: list[dict[str, Any]]
    rerun: list[str]
    plots: list[Path] = field(default_factory=list)


def load_study(storage_url: str | None, output_dir: str | Path, name: str) -> tuple[Any, StorageSpec]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_storage(storage_url, output_dir)
    if spec.path is not None and not spec.path.is_file():
        raise ConfigError(
            f"no study storage at {str(spec.path)!r} (give --storage, or the --output-dir of the study)"
        )
    storage = open_storage(spec)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        raise ConfigError(f"no study {name!r} in {spec.shown} (studies: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=storage), spec


def rerun_command(meta: dict[str, Any], params: dict[str, Any]) -> str:
    parts = [
        "mtlbench",
        "run",
        "--task",
        meta["task"],
        "--method",
        meta["method"],
        "--backbone",
        meta["backbone"],
    ]
    parts += ["--preset", meta["preset"]]
    if meta.get("config_file"):
        parts += ["--config", meta["config_file"]]
    overridden = {o.split("=", 1)[0] for o in meta.get("overrides", [])}
    parts += [o for o in meta.get("overrides", []) if o.split("=", 1)[0] not in params]
    fixed = {k: v for k, v in (meta.get("fixed") or {}).items() if k not in overridden and k not in params}
    values = {**fixed, **params}  # fixed by --param/--space, then the trial's own
    parts += [
        f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items() if k not in overridden
    ]
    return shlex.join(parts)


def _row(trial: Any, objectives: list[str]) -> dict[str, Any]:
    values = trial.values or []
    return {
        "trial": trial.number,
        "values": dict(zip(objectives, values)),
        "params": dict(trial.params),
        "run_folder": trial.user_attrs.get("run_folder"),
    }


def study_report(study: Any, spec: StorageSpec, top: int = 5) -> StudyReport:
    import warnings

    import optuna
    from optuna.trial import TrialState

    meta = study.user_attrs.get(META_KEY) or {}
    multi = len(study.directions) > 1
    objectives = meta.get("objectives") or [f"objective{i}" for i in range(len(study.directions))]
    names = [o.split(":")[0] for o in objectives]
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if multi:
        best = sorted(study.best_trials, key=lambda t: t.number) if complete else []
    else:
        reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = sorted(complete, key=lambda t: t.value, reverse=reverse)[:top]
    importances: dict[str, dict[str, float]] | None = None
    note = None
    if len(complete) < 2:
        note = f"needs at least 2 complete trials (has {len(complete)})"
    else:
        signs = [-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
        try:  # Optuna's default evaluator ranks what achieves a low target: maximised ones are negated
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            importances = {
                name: optuna.importance.get_param_importances(
                    study, target=lambda t, i=i: signs[i] * t.values[i]
                )
                for i, name in enumerate(names)
            }
        except (RuntimeError, ValueError) as exc:
            note = str(exc)
    history = [
        {"trial": t.number, "state": t.state.name.lower(), "values": dict(zip(names, t.values or []))}
        for t in trials
    ]
    rerun = [rerun_command(meta, t.params) for t in (best if multi else best[:1])] if meta else []
    return StudyReport(
        study.study_name,
        spec.shown,
        [d.name.lower() for d in study.directions],
        objectives,
        counts,
        [_row(t, names) for t in best],
        importances,
        note,
        history,
        rerun,
    )


def write_plots(study: Any, folder: Path, names: list[str]) -> list[Path]:
    """Optimisation history, parameter importances and (several objectives) the Pareto front, as PNGs."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    jobs: list[tuple[str, Any]] = []
    for i, name in enumerate(names):
        target = (lambda t, i=i: t.values[i]) if multi else None
        suffix = f"_{name}" if multi else ""
        jobs.append(
            (
                f"history{suffix}.png",
                lambda target=target, name=name: ovm.plot_optimization_history(
                    study, target=target, target_name=name
                ),
            )
        )
        if len(complete) >= 2:
            jobs.append(
                (
                    f"importances{suffix}.png",
                    lambda target=target, name=name: ovm.plot_param_importances(
                        study, target=target, target_name=name
                    ),
                )
            )
    if multi and complete and len(names) in (2, 3):
        jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=names)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for filename, make in jobs:
            ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.savefig(folder / filename, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(folder / filename)
    return written
