"""``mtlbench tune``: an Optuna study whose trials are ordinary mtlbench runs.

A trial's parameters are configuration overrides (``train.lr``, ``task_args.lambda_cls``,
``method_args.lambda_adv``, see :mod:`mtlbench.tune.space`); its run is trained by
:func:`mtlbench.runner.run_experiment` into the usual run folder (named by the configuration's hash),
written to the same ``index.json`` as ``mtlbench run`` and tagged there with the study and trial number
(``tune: [{study, trial}]`` in ``result.json`` and the index entry).

Many workers share a study through its storage (:mod:`mtlbench.tune.storage`): each runs the same
command; ``--trials N`` is the study's total of finished (complete or pruned) trials, so a worker
stops once started and finished trials reach N, and re-running the command resumes a study. A dead
worker's trial is failed by heartbeat and retried with the same parameters, hence the same run folder,
which resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.config import ConfigError, deep_merge, load_config_file, parse_overrides, resolve_config
from mtlbench.tune.objectives import Objective, parse_objectives
from mtlbench.tune.space import SearchSpace, build_space, load_space_file, parse_param_option
from mtlbench.tune.storage import StorageSpec, open_storage, parse_storage

SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "hyperband", "none")
#: Study attribute holding what the study tunes (checked when a worker joins or resumes it).
META_KEY = "mtlbench"


@dataclass
class TuneRequest:
    task: str | None = None
    method: str | None = None
    backbone: str | None = None
    config_file: Path | None = None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    trials: int = 20
    storage: str | None = None
    study: str | None = None
    objectives: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    sampler_seed: int | None = None
    pruner: str | None = None  # None: median for one objective, none for several
    params: list[str] = field(default_factory=list)  # --param KEY=LOW:HIGH | KEY=a,b | KEY=value
    space_file: Path | None = None
    heartbeat_s: int = 60
    grace_s: int | None = None
    max_retry: int = 3


@dataclass
class PreparedStudy:
    request: TuneRequest
    name: str
    storage: StorageSpec
    space: SearchSpace
    objectives: list[Objective]
    task_cls: type
    method_cls: type
    base_values: dict[str, Any]
    output_dir: str
    pruner: str
    meta: dict[str, Any]


@dataclass
class TuneOutcome:
    study: Any
    name: str
    storage: StorageSpec
    finished_here: int


def _resolve(req: TuneRequest, values: dict[str, Any]) -> Any:
    return resolve_config(
        overrides=req.overrides,
        config_file=req.config_file,
        preset=req.preset,
        values=values,
        task=req.task,
        method=req.method,
        backbone=req.backbone,
    )


def prepare_study(req: TuneRequest) -> PreparedStudy:
    """Check everything (configuration, space, objectives, sampler, storage URL); write nothing."""
    from mtlbench.registry import METHODS, TASKS
    from mtlbench.resolve import resolve_run

    if req.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {req.trials}")
    if req.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {req.sampler!r} (use one of: {', '.join(SAMPLERS)})")
    if req.pruner is not None and req.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {req.pruner!r} (use one of: {', '.join(PRUNERS)})")
    base_values = {"train": {"progress": False}}
    cfg = _resolve(req, base_values)
    task_cls = TASKS.get(cfg.task).obj
    method_cls = METHODS.get(cfg.method).obj
    user_tree: dict[str, Any] = {}
    if req.config_file is not None:
        user_tree = load_config_file(req.config_file)
    user_tree = deep_merge(user_tree, parse_overrides(req.overrides))
    narrowing: dict[str, Any] = load_space_file(req.space_file) if req.space_file else {}
    narrowing.update(dict(parse_param_option(p) for p in req.params))
    space = build_space(task_cls, method_cls, user_tree, narrowing)
    objectives = parse_objectives(req.objectives, task_cls, cfg.train.monitor, cfg.train.monitor_mode)
    multi = len(objectives) > 1
    pruner = req.pruner or ("none" if multi else "median")
    if multi and pruner != "none":
        raise ConfigError(
            f"--pruner {pruner}: Optuna cannot prune a multi-objective study (use --pruner none)"
        )
    if req.sampler == "cmaes":
        if multi:
            raise ConfigError("--sampler cmaes optimises one objective; use tpe or random for several")
        try:
            import cmaes  # noqa: F401
        except ModuleNotFoundError:
            raise ConfigError("--sampler cmaes needs the `cmaes` package (pip install cmaes)") from None
    # one configuration from the middle of the space, validated as a run would be (method/task args)
    from mtlbench.tune.space import _Recorder

    probe = space.suggest(_Recorder(""), task_cls, method_cls)
    resolve_run(_resolve(req, deep_merge(base_values, probe)))
    storage = parse_storage(req.storage, cfg.output_dir)
    name = req.study or f"{cfg.task}-{cfg.method}-{cfg.backbone}"
    meta = {
        "task": cfg.task,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "preset": cfg.preset,
        "config_file": str(req.config_file) if req.config_file else None,
        "overrides": list(req.overrides),
        "objectives": [f"{o.name}:{'max' if o.direction == 'maximize' else 'min'}" for o in objectives],
        "output_dir": str(cfg.output_dir),
        "fixed": dict(space.fixed),  # incl. those fixed by --param/--space
    }
    return PreparedStudy(
        req,
        name,
        storage,
        space,
        objectives,
        task_cls,
        method_cls,
        base_values,
        str(cfg.output_dir),
        pruner,
        meta,
    )


def _sampler(name: str, seed: int | None) -> Any:
    import optuna

    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(name: str) -> Any:
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def open_study(prep: PreparedStudy) -> Any:
    """Create or join the study; refuse one that tunes something else under the same name."""
    import optuna

    if prep.storage.kind == "sqlite" and prep.storage.path is not None:
        prep.storage.path.parent.mkdir(parents=True, exist_ok=True)
    storage = open_storage(
        prep.storage, prep.request.heartbeat_s, prep.request.grace_s, prep.request.max_retry
    )
    directions = [o.direction for o in prep.objectives]
    study = optuna.create_study(
        study_name=prep.name,
        storage=storage,
        directions=directions,
        sampler=_sampler(prep.request.sampler, prep.request.sampler_seed),
        pruner=_pruner(prep.pruner),
        load_if_exists=True,
    )
    existing = study.user_attrs.get(META_KEY)
    if existing is None:
        study.set_user_attr(META_KEY, prep.meta)
    else:
        for key in ("task", "method", "backbone", "objectives"):
            if existing.get(key) != prep.meta[key]:
                raise ConfigError(
                    f"study {prep.name!r} in {prep.storage.shown} tunes {key} {existing.get(key)!r}, "
                    f"not {prep.meta[key]!r}; name another study with --study"
                )
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study {prep.name!r} has directions {study.directions}, not {directions}")
    return study


class _ReportAndPrune:
    """Reports the objective's validation metric after each epoch and prunes the trial when told."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        import optuna

        value = record["val"].get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {record['epoch']} ({self.metric}={float(value):.4g})"
            )


def tag_run(folder: Any, output_dir: str, study: str, number: int, retry_of: int | None) -> dict[str, Any]:
    """Record in ``result.json`` and the index that this run served ``study``'s trial ``number``."""
    from mtlbench import atomic
    from mtlbench.results import run_index_entry, update_index

    with atomic.locked(folder.root / ".tune.lock"):
        result = folder.read_result()
        tags = [t for t in result.get("tune") or [] if (t.get("study"), t.get("trial")) != (study, number)]
        tags.append(
            {"study": study, "trial": number, **({"retry_of": retry_of} if retry_of is not None else {})}
        )
        result["tune"] = tags
        folder.write_result(result)
    update_index(output_dir, run_index_entry(result, folder.root))
    return result


def _run_waiting_for_folder(cfg: Any, prepared: Any, callbacks: tuple[Any, ...]) -> Any:
    """Train; when another worker trains the same configuration, wait for it (then reuse its result)."""
    from mtlbench.results import RunFolderError
    from mtlbench.runner import run_experiment

    while True:
        try:
            return run_experiment(cfg, progress=None, prepared=prepared, callbacks=callbacks)
        except RunFolderError as exc:
            if "in use by another" not in str(exc):
                raise
            time.sleep(2.0)


def make_objective(prep: PreparedStudy, study_name: str, log: Callable[[str], None]) -> Callable[[Any], Any]:

    from mtlbench.results import RunFolder
    from mtlbench.runner import prepare_run

    single = len(prep.objectives) == 1
    prune_metric = prep.objectives[0].metric if single and prep.pruner != "none" else None

    def objective(trial: Any) -> Any:
        tree = prep.space.suggest(trial, prep.task_cls, prep.method_cls)
        cfg = _resolve(prep.request, deep_merge(prep.base_values, tree))
        prepared = prepare_run(cfg)
        folder = RunFolder.for_config(prepared.config)  # the resolved configuration names the folder
        frozen = trial.study._storage.get_trial(trial._trial_id)
        retry_of = frozen.system_attrs.get("failed_trial")  # set by the heartbeat retry
        trial.set_user_attr("run_folder", str(folder.root))
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
        resumed = folder.has_checkpoint() and not folder.is_finished()
        log(
            f"trial {trial.number}{f' (retry of {retry_of})' if retry_of is not None else ''}: {params} "
            f"→ {folder.root}{' (resuming)' if resumed else ''}"
        )
        callbacks = (_ReportAndPrune(trial, prune_metric),) if prune_metric else ()
        outcome = _run_waiting_for_folder(cfg, prepared, callbacks)
        result = tag_run(outcome.folder, str(cfg.output_dir), study_name, trial.number, retry_of)
        trial.set_user_attr("run_id", result["run_id"])
        trial.set_user_attr("resumed", bool(result.get("resumed")))
        values = [o.value(result) for o in prep.objectives]
        log(
            f"trial {trial.number}: "
            + ", ".join(f"{o.name}={v:.4g}" for o, v in zip(prep.objectives, values))
        )
        return values[0] if single else values

    return objective


def finished_trials(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(prep: PreparedStudy, log: Callable[[str], None] = print) -> TuneOutcome:
    """Join or create the study and run trials until it has ``--trials`` finished ones."""
    import warnings

    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from mtlbench.trainer import NonFiniteLossError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = open_study(prep)
    searched = ", ".join(d.describe() for d in prep.space.searched.values())
    log(
        f"study {prep.name!r} in {prep.storage.shown}: objective(s) {', '.join(prep.meta['objectives'])}; "
        f"pruner {prep.pruner}; searching {searched}"
    )
    target = prep.request.trials
    before = finished_trials(study)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and re-enqueued (SQL storages)
    taken = len(study.get_trials(deepcopy=False, states=counted))
    if taken >= target and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        log(
            f"study {prep.name!r} has {before} finished and {taken - before} running trials "
            f"(--trials {target})"
        )
        return TuneOutcome(study, prep.name, prep.storage, 0)
    stop = MaxTrialsCallback(target, states=counted)
    while True:
        study.optimize(
            make_objective(prep, prep.name, log),
            n_trials=target,
            callbacks=[stop],
            catch=(NonFiniteLossError,),
            gc_after_trial=True,
        )
        if not wait_for_running_trials(study, prep.request.heartbeat_s):
            break
    return TuneOutcome(study, prep.name, prep.storage, finished_trials(study) - before)


def wait_for_running_trials(study: Any, heartbeat_s: int) -> bool:
    """After this worker's share is done, wait while other trials still run: a dead worker's
    trial counts as running until its heartbeat goes stale, and then it is failed and queued
    again (True: run the queued retry here). Without heartbeats (journal storage) nothing can be
    told about a running trial, so the worker stops (False)."""
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    if not is_heartbeat_enabled(study._storage):
        return False
    while True:
        optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
        time.sleep(max(1, heartbeat_s))
