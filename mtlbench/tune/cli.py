"""``mtlbench tune`` (run or join a study) and ``mtlbench tune show`` (what a study found)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlbench.cli_support import EXIT_FAILED, EXIT_INTERRUPTED, fail, user_errors

TUNE_HELP = """Optuna study over the method's, the task's and the trainer's search spaces; every trial is a
run in the results index, tagged with the study and trial. Run the same command on several machines
(one --storage) to share a study; run it again to resume. `mtlbench tune show --study NAME` shows
the best trials, parameter importances, history, the Pareto front and the command to re-run."""


def register_commands(app: typer.Typer) -> None:
    @app.command("tune", help=TUNE_HELP)
    def tune(
        overrides: Annotated[
            list[str] | None,
            typer.Argument(
                help="Fixed settings key=value (a searched key given here is not searched); `show`."
            ),
        ] = None,
        task: Annotated[str | None, typer.Option("--task", "-t", help="Task name.")] = None,
        method: Annotated[str | None, typer.Option("--method", "-m", help="Method name.")] = None,
        backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone name.")] = None,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML file with settings.")
        ] = None,
        preset: Annotated[str | None, typer.Option("--preset", "-p", help="A preset of the task.")] = None,
        trials: Annotated[
            int, typer.Option("--trials", "-n", help="Finished trials the study should have.")
        ] = 20,
        storage: Annotated[
            str | None,
            typer.Option(
                help="sqlite:///FILE (default <output_dir>/optuna.db), postgresql+psycopg://USER@HOST/DB, "
                "or journal:FILE on a shared file system."
            ),
        ] = None,
        study: Annotated[
            str | None, typer.Option(help="Study name (default <task>-<method>-<backbone>).")
        ] = None,
        objective: Annotated[
            list[str] | None,
            typer.Option(
                "--objective",
                "-O",
                help="NAME[:max|min], repeatable: a validation metric (default: the monitor), step_time, "
                "peak_memory. Two or more: multi-objective, Pareto front, no pruning.",
            ),
        ] = None,
        sampler: Annotated[str, typer.Option(help="tpe | cmaes | random.")] = "tpe",
        sampler_seed: Annotated[int | None, typer.Option(help="Seed of the sampler (one worker).")] = None,
        pruner: Annotated[
            str | None, typer.Option(help="median (default, one objective) | hyperband | none.")
        ] = None,
        param: Annotated[
            list[str] | None,
            typer.Option("--param", help="Narrow a searched parameter: KEY=LOW:HIGH, KEY=a,b or KEY=value."),
        ] = None,
        space: Annotated[
            Path | None, typer.Option("--space", help="YAML: KEY: [LOW, HIGH] | {choices: [..]} | value.")
        ] = None,
        heartbeat: Annotated[
            int,
            typer.Option(
                help="Seconds between a worker's heartbeats (SQL storages); a trial silent for "
                "twice as long is failed and retried."
            ),
        ] = 60,
        top: Annotated[int, typer.Option(help="show: how many best trials.")] = 5,
        output_dir: Annotated[
            Path, typer.Option("--output-dir", "-o", help="show: the runs folder holding optuna.db.")
        ] = Path("runs"),
        plots: Annotated[bool, typer.Option(help="show: write PNG plots beside the study.")] = True,
    ) -> None:
        args = list(overrides or [])
        if args and args[0] == "show":
            if study is None:
                fail("tune show: name the study with --study NAME")
            _show(study, storage, output_dir, args[1:], top, plots)
            return
        _tune(
            args,
            task,
            method,
            backbone,
            config,
            preset,
            trials,
            storage,
            study,
            objective or [],
            sampler,
            sampler_seed,
            pruner,
            param or [],
            space,
            heartbeat,
        )


def _tune(
    args,
    task,
    method,
    backbone,
    config,
    preset,
    trials,
    storage,
    study,
    objectives,
    sampler,  # type: ignore[no-untyped-def]
    sampler_seed,
    pruner,
    params,
    space,
    heartbeat,
) -> None:
    from mtlbench.tune.study import TuneRequest, prepare_study, run_study

    request = TuneRequest(
        task=task,
        method=method,
        backbone=backbone,
        config_file=config,
        preset=preset,
        overrides=args,
        trials=trials,
        storage=storage,
        study=study,
        objectives=objectives,
        sampler=sampler,
        sampler_seed=sampler_seed,
        pruner=pruner,
        params=params,
        space_file=space,
        heartbeat_s=heartbeat,
    )
    errors = user_errors()
    try:
        prep = prepare_study(request)
    except errors as exc:
        fail(str(exc))
        return
    from mtlbench.atomic import WriteError

    try:
        outcome = run_study(prep, log=typer.echo)
    except errors as exc:
        fail(str(exc))
        return
    except WriteError as exc:
        fail(str(exc), EXIT_FAILED)
        return
    except KeyboardInterrupt:
        typer.echo("interrupted: finished trials are saved; run the same command again to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    from mtlbench.tune.study import finished_trials

    typer.echo(
        f"{outcome.finished_here} trial(s) finished here; the study has {finished_trials(outcome.study)}. "
        f"See: mtlbench tune show --study {prep.name}"
        + (f" --storage '{prep.storage.shown}'" if storage else f" -o {prep.output_dir}")
    )


def _show(name: str, storage: str | None, output_dir: Path, extra: list[str], top: int, plots: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from mtlbench.tune.show import load_study, study_report, write_plots

    if extra:
        fail(f"tune show takes no settings, got {' '.join(extra)}")
    try:
        study, spec = load_study(storage, output_dir, name)
        report = study_report(study, spec, top)
    except user_errors() as exc:
        fail(str(exc))
        return
    console = Console(width=160)
    console.print(
        f"[bold]study {report.name}[/bold] in {report.storage}: objectives {', '.join(report.objectives)}; "
        f"trials {', '.join(f'{k} {v}' for k, v in sorted(report.counts.items()))}"
    )
    names = [o.split(":")[0] for o in report.objectives]
    multi = len(names) > 1
    table = Table(title="Pareto front" if multi else f"best {len(report.best)} trials", title_justify="left")
    table.add_column("trial", justify="right")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("parameters")
    table.add_column("run folder")
    for row in report.best:
        params = "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items()
        )
        table.add_row(
            str(row["trial"]), *(f"{row['values'][n]:.4g}" for n in names), params, str(row["run_folder"])
        )
    console.print(table)
    if report.importances:
        imp = Table(
            title="parameter importances (Optuna's default evaluator, per objective)", title_justify="left"
        )
        imp.add_column("parameter")
        for n in names:
            imp.add_column(n, justify="right")
        keys = list(dict.fromkeys(k for per in report.importances.values() for k in per))
        for k in keys:
            imp.add_row(k, *(f"{report.importances[n].get(k, 0.0):.3f}" for n in names))
        console.print(imp)
    else:
        console.print(f"parameter importances: {report.importance_note}")
    hist = Table(title="optimisation history", title_justify="left")
    hist.add_column("trial", justify="right")
    hist.add_column("state")
    for n in names:
        hist.add_column(n, justify="right")
    for h in report.history:
        hist.add_row(
            str(h["trial"]), h["state"], *(f"{h['values'][n]:.4g}" if n in h["values"] else "" for n in names)
        )
    console.print(hist)
    if plots:
        folder = output_dir / "tune" / report.name
        written = write_plots(study, folder, names)
        console.print(f"plots: {', '.join(str(p) for p in written)}")
    for cmd in report.rerun:
        typer.echo(f"re-run: {cmd}")
