"""The ``mtlbench`` command line. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mtlbench.cli_support import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    data_formats,
    fail,
    make_console,
    task_cli_modules,
    user_errors,
)

if TYPE_CHECKING:
    from mtlbench.config import RunConfig

app = typer.Typer(
    name="mtlbench",
    help="Multitask optimisation benchmarks for medical imaging: one trainer, every method, every backbone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

KINDS = ("tasks", "methods", "backbones")


OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Config overrides key=value, e.g. train.epochs=5 data.root=/data")
]
TaskOpt = Annotated[str | None, typer.Option("--task", "-t", help="Task name (see `mtlbench list tasks`).")]
MethodOpt = Annotated[
    str | None, typer.Option("--method", "-m", help="Method name (see `mtlbench list methods`).")
]
BackboneOpt = Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone name.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file with settings.")]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help="A preset of the task: quick (the default) or its own.")
]


def _config(
    task: str | None,
    method: str | None,
    backbone: str | None,
    config: Path | None,
    preset: str | None,
    overrides: list[str] | None,
) -> RunConfig:
    """The run configuration from the command's options (validated, registry sections unchecked)."""
    from mtlbench.config import resolve_config

    return resolve_config(
        overrides=overrides or [],
        config_file=config,
        preset=preset,
        task=task,
        method=method,
        backbone=backbone,
    )


@app.command()
def run(
    overrides: OverridesArg = None,
    task: TaskOpt = None,
    method: MethodOpt = None,
    backbone: BackboneOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an earlier attempt and start over.")
    ] = False,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            min=1,
            help="Train data-parallel in this many processes on this machine (one per GPU; gloo on the CPU): "
            "re-launches the command through torchrun. See docs/distributed.md.",
        ),
    ] = None,
) -> None:
    """Train one task with one method and backbone; resumes an interrupted run with the same config."""
    if nproc_per_node is not None:
        _relaunch_with_torchrun(nproc_per_node, task, method, backbone, config, preset, restart, overrides)
        return
    errors = user_errors()
    from mtlbench import distributed

    try:
        try:
            from mtlbench.runner import prepare_run

            prepared = prepare_run(_config(task, method, backbone, config, preset, overrides))
        except errors as exc:
            fail(str(exc))
            return
        _train_and_report(prepared, restart)
    finally:
        distributed.shutdown()


def _relaunch_with_torchrun(  # type: ignore[no-untyped-def]
    nproc: int, task, method, backbone, config, preset, restart: bool, overrides
) -> None:
    """``mtlbench run`` again, as ``torchrun --standalone --nproc_per_node N -m mtlbench run …``."""
    import os
    import subprocess
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("--nproc-per-node launches torchrun; under torchrun already, leave it out")
    args = ["run"]
    for flag, value in (
        ("--task", task),
        ("--method", method),
        ("--backbone", backbone),
        ("--config", config),
        ("--preset", preset),
    ):
        if value is not None:
            args += [flag, str(value)]
    if restart:
        args.append("--restart")
    args += list(overrides or [])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    process = subprocess.Popen([*launcher, "-m", "mtlbench", *args])
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers: wait for it
            continue
    if code:
        raise typer.Exit(code)


def _interrupted_message(cfg) -> str:  # type: ignore[no-untyped-def]
    from mtlbench.results import RunFolder

    folder = RunFolder.for_config(cfg)
    if folder.has_checkpoint():
        return "interrupted: the last finished epoch is saved; run the same command again to resume"
    return (
        "interrupted before the first epoch finished: nothing to resume; run the same command again to start"
    )


def _run_failures() -> tuple[type[BaseException], ...]:
    """Failures of a valid run that end it with one line and status 3: a non-finite loss, a file that
    cannot be written (full disk, read-only folder)."""
    from mtlbench.atomic import WriteError
    from mtlbench.trainer import NonFiniteLossError

    return (NonFiniteLossError, WriteError)


def _train_and_report(prepared, restart: bool) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console

    from mtlbench import distributed
    from mtlbench.progress import TrainingProgress
    from mtlbench.results import RunFolder
    from mtlbench.runner import run_experiment
    from mtlbench.summary import summary_table

    console = make_console()
    console.quiet = not distributed.is_main_process()  # torchrun: rank 0 reports for all
    cfg = prepared.config
    console.print(
        f"[bold]mtlbench run[/bold] task={cfg.task} method={cfg.method} backbone={cfg.backbone} "
        f"preset={cfg.preset} device={prepared.device} run_id={cfg.run_id()}"
    )
    folder = RunFolder.for_config(cfg)
    if not restart and not folder.is_finished() and folder.has_checkpoint():
        console.print("resuming from the last checkpoint")
    try:
        quiet = Console(stderr=True, quiet=True) if console.quiet else None  # ranks > 0 show nothing
        live = cfg.train.progress and not console.quiet
        with TrainingProgress(quiet, live=live, metrics=prepared.task.shown_metrics()) as progress:
            outcome = run_experiment(cfg, restart=restart, progress=progress, prepared=prepared)
    except _run_failures() as exc:
        fail(str(exc), EXIT_FAILED)
        return
    except user_errors() as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        typer.echo(_interrupted_message(cfg), err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if outcome.already_finished:
        console.print(
            "this configuration has already finished; showing its result (use --restart to train again)"
        )
    console.print(summary_table(outcome.result, prepared.task.summary_metrics))
    res = outcome.result
    console.print(
        f"best epoch {res['best_epoch']} of {res['epochs']}  ·  train {res['train_time_s']:.1f} s  ·  "
        f"mean step {1000 * res['mean_step_time_s']:.1f} ms  ·  peak memory {res['peak_memory_mb']:.0f} MiB"
    )
    console.print(f"run folder: {outcome.folder.root}")


@app.command()
def cv(
    overrides: OverridesArg = None,
    task: TaskOpt = None,
    method: MethodOpt = None,
    backbone: BackboneOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of folds (the paper: 3).")] = 3,
) -> None:
    """k-fold cross-validation on folds shared by every method (grouped, stratified): mean ± std."""
    errors = user_errors()
    try:
        cfg = _config(task, method, backbone, config, preset, overrides)
        from mtlbench.cv import run_cv
        from mtlbench.progress import TrainingProgress
        from mtlbench.registry import TASKS
        from mtlbench.summary import cv_table

        task_cls = TASKS.get(cfg.task).obj
        with TrainingProgress(live=cfg.train.progress, metrics=task_cls.shown_metrics()) as progress:
            outcome = run_cv(cfg, folds, progress=progress)
    except errors as exc:
        fail(str(exc))
        return
    except _run_failures() as exc:
        fail(str(exc), EXIT_FAILED)
        return
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: every finished epoch of every fold is saved; run the same command again to resume",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console = make_console()
    console.print(cv_table(outcome.summary, task_cls.summary_metrics))
    console.print(f"fold runs: {', '.join(str(o.folder.root) for o in outcome.folds)}")
    console.print(f"summary: {outcome.path}")


@app.command("index")
def index_command(
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Recreate index.json from the run folders (result.json files).")
    ] = False,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="The runs folder.")] = Path("runs"),
) -> None:
    """The index of finished runs (<output-dir>/index.json): list it, or rebuild it from the run folders."""
    from mtlbench.results import CorruptIndexError, index_path, read_index, rebuild_index

    if rebuild:
        try:
            runs, problems = rebuild_index(output_dir)
        except OSError as exc:
            fail(str(exc), EXIT_FAILED)
            return
        for problem in problems:
            typer.echo(f"skipped {problem}", err=True)
        typer.echo(f"{index_path(output_dir)}: {len(runs)} runs indexed from the run folders")
        return
    try:
        runs = read_index(output_dir)
    except CorruptIndexError as exc:
        fail(str(exc), EXIT_FAILED)
        return
    for entry in runs:
        typer.echo(f"{entry.get('run_id')}  {entry.get('task')}  {entry.get('method')}  {entry.get('path')}")


@app.command("list")
def list_entries(
    kind: Annotated[
        str | None, typer.Argument(help="tasks, methods or backbones (default: all three).")
    ] = None,
    pattern: Annotated[str, typer.Option("--filter", "-f", help="Wildcard on names, e.g. '*unet*'.")] = "*",
) -> None:
    """List registered tasks, methods and backbones with a one-line description each."""
    from rich.console import Console
    from rich.table import Table

    from mtlbench.registry import BACKBONES, METHODS, TASKS

    registries = {"tasks": TASKS, "methods": METHODS, "backbones": BACKBONES}
    if kind is not None and kind not in registries:
        fail(f"unknown kind {kind!r} (use one of: {', '.join(KINDS)})")
    console = Console()
    for name in [kind] if kind else list(KINDS):
        table = Table(title=name, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for entry_name, description in registries[name].describe(pattern):
            table.add_row(entry_name, description)
        console.print(table)


@config_app.command("show")
def config_show(
    overrides: OverridesArg = None,
    task: TaskOpt = None,
    method: MethodOpt = None,
    backbone: BackboneOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Print the fully resolved configuration (YAML) and its run id."""
    errors = user_errors()
    try:
        from mtlbench.resolve import resolve_run

        resolved = resolve_run(_config(task, method, backbone, config, preset, overrides))
    except errors as exc:
        fail(str(exc))
        return
    from mtlbench.config import to_yaml

    typer.echo(f"# run id: {resolved.run_id}")
    typer.echo(to_yaml(resolved.config.to_dict()).rstrip())


plot_app = typer.Typer(help="Figures.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")


@plot_app.command("toy")
def plot_toy_command(
    methods: Annotated[
        str, typer.Option("--methods", "-m", help="Comma-separated methods, one panel each.")
    ] = "vanilla,pcgrad,mgda,cagrad,nash_mtl",
    steps: Annotated[int, typer.Option(help="Adam steps per start (the papers: 100000 at lr 1e-3).")] = 20000,
    lr: Annotated[float, typer.Option(help="Adam learning rate (the papers: 1e-3).")] = 1e-3,
    starts: Annotated[str, typer.Option(help="nash_mtl (5 points) or cagrad (3 points).")] = "nash_mtl",
    f1_scale: Annotated[float, typer.Option(help="Multiply f1 (0.1 = Nash-MTL's imbalanced variant).")] = 1.0,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("toy.png"),
) -> None:
    """Trajectories of methods on the two-objective toy problem (CAGrad paper, Fig. 1)."""
    from mtlbench.plots.toy import plot_toy
    from mtlbench.toy.problem import CAGRAD_STARTS, NASH_MTL_STARTS

    points = {"nash_mtl": NASH_MTL_STARTS, "cagrad": CAGRAD_STARTS}.get(starts)
    if points is None:
        fail(f"--starts must be nash_mtl or cagrad, got {starts!r}")
        return
    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        path = plot_toy(names, out, steps=steps, lr=lr, starts=points, f1_scale=f1_scale, report=typer.echo)
    except (*user_errors(), ValueError) as exc:
        fail(str(exc))
        return
    typer.echo(f"wrote {path}")


data_app = typer.Typer(help="Inspect local data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


_TASK_CLI_MODULES = task_cli_modules()
for _module in _TASK_CLI_MODULES:
    if hasattr(_module, "register_commands"):
        _module.register_commands(app)


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="Folder of the data set.")],
    data_format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help=f"Layout of the data set: {' | '.join(data_formats(_TASK_CLI_MODULES))}"
        ),
    ],
    options: Annotated[
        list[str] | None,
        typer.Argument(help="Reader options key=value (as data.reader_options), e.g. frame_stride=5."),
    ] = None,
    stop_at_first: Annotated[
        bool, typer.Option("--stop-at-first", help="Stop at the first problem instead of listing them all.")
    ] = False,
    empty_masks: Annotated[str | None, typer.Option(hidden=True, help="Same as empty_masks=...")] = None,
    frame_stride: Annotated[int | None, typer.Option(hidden=True, help="Same as frame_stride=...")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
) -> None:
    """Read every sample of a data set; print counts, skipped samples and every problem with its file."""
    formats = data_formats(_TASK_CLI_MODULES)
    if data_format not in formats:
        fail(f"unknown data-set format {data_format!r} (available: {', '.join(formats)})")
    errors = user_errors()
    try:
        from mtlbench.config import parse_scalar_options

        reader_options = parse_scalar_options(options or [], "data check option")
        reader_options["skip_invalid"] = not stop_at_first
        if empty_masks is not None:
            reader_options["empty_masks"] = empty_masks
        if frame_stride is not None:
            reader_options["frame_stride"] = frame_stride
        text, report, n_problems = formats[data_format].check_data_set(root, data_format, reader_options)
    except errors as exc:
        fail(str(exc))
        return
    typer.echo(text)
    if json_out is not None:
        from mtlbench import atomic

        atomic.write_json(json_out, report)
    if n_problems:
        raise typer.Exit(EXIT_FAILED)


# --- leaderboards (issue #10): `mtlbench grid` and `mtlbench report`, defined in mtlbench/report/cli.py
from mtlbench.report.cli import register_commands as _register_report_commands  # noqa: E402

_register_report_commands(app)

# --- the price of each method (issue #12): `mtlbench bench`, in mtlbench/bench/cli.py
from mtlbench.bench.cli import register_commands as _register_bench_commands  # noqa: E402

_register_bench_commands(app)

# --- hyper-parameter studies (issue #13): `mtlbench tune` and `mtlbench tune show`, in mtlbench/tune/cli.py
from mtlbench.tune.cli import register_commands as _register_tune_commands  # noqa: E402

_register_tune_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
