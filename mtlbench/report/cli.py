"""The ``grid`` and ``report`` commands (typer only at import; heavy imports inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mtlbench.cli_support import EXIT_FAILED, EXIT_INTERRUPTED, fail, user_errors


def register_commands(app: typer.Typer) -> None:
    app.command("grid")(grid)
    app.command("report")(report)
    app.command("sweep")(sweep)


def grid(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Settings for every run, key=value (e.g. train.epochs=2).")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task name.")] = None,
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated methods.")] = "vanilla",
    backbones: Annotated[
        str, typer.Option("--backbones", "-b", help="Comma-separated backbones.")
    ] = "unet_small",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0",
    folds: Annotated[
        int | None, typer.Option("--folds", "-k", help="k-fold CV: every fold of every cell.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file with settings.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="A preset of the task.")] = None,
    with_single_task: Annotated[
        bool, typer.Option("--with-single-task", help="Add single-task vanilla runs (the Δm% baselines).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cells and their status; run nothing.")
    ] = False,
    emit: Annotated[
        bool, typer.Option("--emit-commands", help="Print one `mtlbench run` command per unfinished cell.")
    ] = False,
) -> None:
    """Train every (method, backbone, seed, fold); finished runs are skipped, failures recorded."""
    try:
        from mtlbench.grid import GridSpec, expand_grid, parse_list, parse_seeds

        if not task:
            fail("no task given: name one with --task")
        spec = GridSpec(
            task=task,
            methods=parse_list(methods, "--methods"),
            backbones=parse_list(backbones, "--backbones"),
            seeds=parse_seeds(seeds),
            folds=folds,
            overrides=tuple(overrides or ()),
            config_file=config,
            preset=preset,
            with_single_task=with_single_task,
        )
        cells = expand_grid(spec)
    except user_errors() as exc:
        fail(str(exc))
        return
    _dispatch(spec, cells, dry_run, emit)


def _dispatch(spec: Any, cells: list[Any], dry_run: bool, emit: bool) -> None:
    if emit:
        from mtlbench.grid import emit_commands

        for line in emit_commands(spec, cells):
            typer.echo(line)
        return
    if dry_run:
        for cell in cells:
            extra = f"  ({cell.error})" if cell.error else ""
            typer.echo(f"{cell.status:9s} {cell.run_id}  {cell.label}{extra}")
        pending = sum(c.status != "finished" for c in cells)
        typer.echo(f"{len(cells)} runs, {len(cells) - pending} finished, {pending} to run")
        return
    _run_grid(cells)


def _run_grid(cells: list[Any]) -> None:
    from rich.console import Console

    from mtlbench.grid import run_grid
    from mtlbench.progress import TrainingProgress
    from mtlbench.registry import TASKS

    console = Console(stderr=True)
    task_cls = TASKS.get(cells[0].config.task).obj
    total = len(cells)
    done = sum(c.status == "finished" for c in cells)
    console.print(f"[bold]mtlbench grid[/bold] {total} runs, {done} already finished")

    def announce(cell: Any, i: int, n: int, phase: str) -> None:
        if phase == "start":
            console.print(f"[bold]run[/bold] [{i}/{n}] {cell.label} ({cell.status}) run_id={cell.run_id}")
        elif cell.status == "failed":
            console.print(f"[red]failed[/red] [{i}/{n}] {cell.label}: {cell.error}")
        else:
            console.print(f"[green]done[/green] [{i}/{n}] {cell.label}")

    live = cells[0].config.train.progress
    progress = _grid_progress(TrainingProgress, console, live, task_cls.shown_metrics(), total, done)

    def on_cell(cell: Any, i: int, n: int, phase: str) -> None:
        announce(cell, i, n, phase)
        progress.grid_step(cell, phase)

    try:
        with progress:
            outcome = run_grid(cells, progress=progress, on_cell=on_cell)
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to resume the grid", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(
        f"grid: {len(outcome.ran)} trained, {len(outcome.skipped)} already finished, "
        f"{len(outcome.failed)} failed"
    )
    for cell in outcome.failed:
        console.print(f"  failed: {cell.label}: {cell.error}")
    if outcome.failed:
        raise typer.Exit(EXIT_FAILED)


def _grid_progress(
    base: type, console: Any, live: bool, metrics: tuple[str, ...], total: int, done: int
) -> Any:
    """The trainer's progress display with one more bar: runs of the grid done out of all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class GridProgress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(console=console, live=live, metrics=metrics)
            self._progress = Progress(
                TextColumn("[bold]{task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[losses]}"),
                TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._grid = self._progress.add_task(
                "grid", total=total, completed=done, epoch="grid", losses="", speed=""
            )

        def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
            if not self.live:
                return
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                "train", total=steps, epoch=f"epoch {epoch}/{epochs}", losses="", speed=""
            )

        def grid_step(self, cell: Any, phase: str) -> None:
            if phase == "start":
                self._progress.update(self._grid, losses=cell.label)
            else:
                self._progress.advance(self._grid)

    return GridProgress()


def sweep(
    overrides: Annotated[list[str] | None, typer.Argument(help="Settings for every run, key=value.")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task name.")] = None,
    weights: Annotated[str, typer.Option("--weights", "-w", help="grid or dirichlet:N.")] = "grid",
    step: Annotated[float, typer.Option("--step", help="Lattice spacing of --weights grid.")] = 0.25,
    backbones: Annotated[
        str, typer.Option("--backbones", "-b", help="Comma-separated backbones.")
    ] = "unet_small",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0",
    folds: Annotated[int | None, typer.Option("--folds", "-k", help="k-fold CV for every vector.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="A preset of the task.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and their status.")] = False,
    emit: Annotated[
        bool, typer.Option("--emit-commands", help="Print one command per unfinished run.")
    ] = False,
) -> None:
    """Linear scalarisation: vanilla over task-weight vectors (same budget as a method run)."""
    try:
        from mtlbench.grid import (
            GridSpec,
            expand_grid,
            parse_list,
            parse_seeds,
            sweep_task_names,
            sweep_variants,
            weight_vectors,
        )

        if not task:
            fail("no task given: name one with --task")
        names = sweep_task_names(task, overrides or [], preset)
        vectors = weight_vectors(len(names), weights, step)
        spec = GridSpec(
            task=task,
            methods=(),
            backbones=parse_list(backbones, "--backbones"),
            seeds=parse_seeds(seeds),
            folds=folds,
            overrides=tuple(overrides or ()),
            preset=preset,
            vanilla_variants=sweep_variants(names, vectors),
        )
        cells = expand_grid(spec)
    except user_errors() as exc:
        fail(str(exc))
        return
    _dispatch(spec, cells, dry_run, emit)


def report(
    runs: Annotated[Path, typer.Option("--runs", help="Results folder (output_dir of the runs).")] = Path(
        "runs"
    ),
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: RUNS/report).")
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", "-f", help="Any of md,tex,csv,html.")
    ] = "md,tex,csv,html",
    reference: Annotated[
        bool, typer.Option("--reference", help="Add published numbers as marked rows.")
    ] = False,
    baseline: Annotated[
        str, typer.Option("--baseline", help="Method the significance column compares to.")
    ] = ("vanilla"),
    test: Annotated[str, typer.Option("--test", help="wilcoxon or bootstrap (paired over seed, fold).")] = (
        "wilcoxon"
    ),
    metric: Annotated[
        str | None, typer.Option("--metric", help="Metric of the significance test (default: task monitor).")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split of the significance test (default: test).")
    ] = (None),
    lower_is_better: Annotated[
        str, typer.Option("--lower-is-better", help="Comma-separated metrics where lower is better.")
    ] = "",
    splits: Annotated[
        str | None, typer.Option("--splits", help="Only these splits as table columns, e.g. test,external.")
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Tables only.")] = False,
    bench: Annotated[
        Path | None,
        typer.Option(
            "--bench", help="A `mtlbench bench` JSON: its side-by-side step cost fills the cost columns."
        ),
    ] = None,
) -> None:
    """Leaderboards from stored runs: mean ± std, best/second, Δm%, ranks, cost, significance, plots."""
    from mtlbench.report.render import FORMATS
    from mtlbench.report.stats import TESTS

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        fail(f"unknown format(s) {', '.join(unknown) or formats!r} (use any of: {','.join(FORMATS)})")
    if test not in TESTS:
        fail(f"unknown test {test!r} (use one of: {', '.join(TESTS)})")
    from mtlbench.report.build import write_report
    from mtlbench.report.tables import ReportOptions

    bench_record = None
    if bench is not None:
        import json

        try:
            bench_record = json.loads(bench.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--bench {str(bench)!r}: not a readable bench record ({exc})")
        if not isinstance(bench_record, dict) or bench_record.get("kind") != "mtlbench bench":
            fail(f"--bench {str(bench)!r}: not a `mtlbench bench` record (no kind: mtlbench bench)")
    options = ReportOptions(
        bench=bench_record,
        baseline=baseline,
        test=test,
        metric=metric,
        split=split,
        lower_is_better=frozenset(m.strip() for m in lower_is_better.split(",") if m.strip()),
        reference=reference,
        splits=tuple(x.strip() for x in splits.split(",") if x.strip()) if splits else None,
    )
    try:
        output = write_report(runs, out or runs / "report", task, chosen, options, plots=not no_plots)
    except ValueError as exc:
        fail(str(exc))
        return
    for problem in output.collection.problems:
        typer.echo(f"skipped: {problem}", err=True)
    if output.collection.unfinished:
        typer.echo(f"{len(output.collection.unfinished)} unfinished run folder(s) left out", err=True)
    if not output.leaderboards:
        fail(f"no finished runs under {runs}" + (f" for task {task!r}" if task else ""))
    for lb in output.leaderboards:
        typer.echo(f"{lb.task}: {len(lb.measured())} rows from {sum(len(r.runs) for r in lb.rows)} runs")
    for path in output.written:
        typer.echo(f"wrote {path}")
