"""``mtlbench bench``: the price of each method — step time, where it goes, and memory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from mtlbench.cli_support import EXIT_FAILED, fail, make_console, user_errors

DEFAULT_METHODS = "vanilla,pcgrad,cagrad,mgda,rlar"


def parse_scale(text: str | None) -> tuple[str, list[str]] | None:
    """``"train.batch_size=2;4;8"`` → (``train.batch_size``, ``["2", "4", "8"]``)."""
    if text is None:
        return None
    key, eq, values = text.partition("=")
    items = [v.strip() for v in values.split(";") if v.strip()]
    if not eq or not key.strip() or len(items) < 2:
        from mtlbench.config import ConfigError

        raise ConfigError(f"--scale must be KEY=V1;V2[;...] with at least two values, got {text!r}")
    return key.strip(), items


def check_writable(option: str, path: Path) -> None:
    """A clear error now if ``path`` could not be written later (its nearest existing folder is not
    writable, or it names a folder); nothing is created."""
    import os

    from mtlbench.config import ConfigError

    if path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a folder, not a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {str(path)!r}: cannot write under {str(folder)!r}")


def register_commands(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        overrides: Annotated[
            list[str] | None,
            typer.Argument(help="Settings key=value for every method, e.g. train.batch_size=8"),
        ] = None,
        task: Annotated[str | None, typer.Option("--task", "-t", help="Task name.")] = None,
        methods: Annotated[
            str,
            typer.Option(
                "--methods",
                help="Comma-separated methods, each optionally with settings: rlar:every=4 or "
                "rlar:subset=2;lambda_adv=0.5. Must include vanilla.",
            ),
        ] = DEFAULT_METHODS,
        backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone name.")] = None,
        preset: Annotated[str | None, typer.Option("--preset", "-p", help="A preset of the task.")] = None,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML file with settings.")
        ] = None,
        device: Annotated[
            str | None, typer.Option("--device", help="cpu, cuda or cuda:N (train.device).")
        ] = None,
        amp: Annotated[
            str | None, typer.Option("--amp", help="none, bf16, fp16 or auto (train.amp).")
        ] = None,
        rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved timing rounds.")] = 10,
        warmup: Annotated[int, typer.Option("--warmup", min=0, help="Warm-up steps per method.")] = 2,
        breakdown_rounds: Annotated[
            int,
            typer.Option("--breakdown-rounds", min=0, help="Rounds that time the step's phases (0: none)."),
        ] = 3,
        memory: Annotated[
            str, typer.Option("--memory", help="subprocess (each method in its own process), inline, or off.")
        ] = "subprocess",
        memory_steps: Annotated[
            int, typer.Option("--memory-steps", min=1, help="Steps per memory probe.")
        ] = 3,
        threads: Annotated[
            int | None, typer.Option("--threads", min=1, help="CPU threads (torch.set_num_threads).")
        ] = None,
        scale: Annotated[
            str | None,
            typer.Option(
                "--scale",
                help="Repeat for each value of one setting, e.g. train.batch_size=2;4;8 or "
                "data.image_size=64;128 or method_args.representation=bottleneck;mid, and plot the ratios.",
            ),
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="JSON file (default: <output_dir>/bench/...).")
        ] = None,
        plot: Annotated[
            Path | None, typer.Option("--plot", help="PNG file (default: next to the JSON).")
        ] = None,
    ) -> None:
        """Time every method's training step on the same model and batch, side by side, with its
        breakdown and peak memory; a table, a JSON record and a plot."""
        errors = user_errors()
        try:
            record, json_path, png_path = _bench(
                overrides or [],
                task,
                methods,
                backbone,
                preset,
                config,
                device,
                amp,
                rounds,
                warmup,
                breakdown_rounds,
                memory,
                memory_steps,
                threads,
                scale,
                out,
                plot,
            )
        except errors as exc:
            fail(str(exc))
            return
        except RuntimeError as exc:
            fail(f"bench failed: {exc}", EXIT_FAILED)
            return
        from mtlbench.bench.render import bench_tables

        out_console = make_console()
        for table in bench_tables(record):
            out_console.print(table)
        out_console.print(f"results: {json_path}")
        if png_path is not None:
            out_console.print(f"plot: {png_path}")


def _bench(
    overrides: list[str],
    task: str | None,
    methods: str,
    backbone: str | None,
    preset: str | None,
    config: Path | None,
    device: str | None,
    amp: str | None,
    rounds: int,
    warmup: int,
    breakdown_rounds: int,
    memory: str,
    memory_steps: int,
    threads: int | None,
    scale: str | None,
    out: Path | None,
    plot: Path | None,
) -> tuple[dict[str, Any], Path, Path | None]:
    from mtlbench.config import ConfigError

    if memory not in ("subprocess", "inline", "off"):
        raise ConfigError(f"--memory must be subprocess, inline or off, got {memory!r}")
    import torch

    from mtlbench import atomic
    from mtlbench.bench.compare import method_configs, parse_methods, run_comparison
    from mtlbench.bench.render import bench_plot

    if threads is not None:
        torch.set_num_threads(threads)
    specs = parse_methods(methods)
    if "vanilla" not in [s.label for s in specs]:
        raise ConfigError("--methods must include vanilla: every ratio is taken against it")
    base = list(overrides)
    if device is not None:
        base.append(f"train.device={device}")
    if amp is not None:
        base.append(f"train.amp={amp}")
    top = {"task": task, "backbone": backbone, "preset": preset, "config_file": config}
    scaling = parse_scale(scale)
    points = [None] if scaling is None else scaling[1]
    # every configuration is resolved (and so checked) before the first step is timed
    configs = {
        value: method_configs(specs, base + ([] if value is None else [f"{scaling[0]}={value}"]), **top)  # type: ignore[index]
        for value in points
    }
    first = next(iter(configs[points[0]].values()))
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(first.output_dir) / "bench" / f"{first.task}-{first.backbone}-{stamp}.json"
    png = plot if plot is not None else out.with_suffix(".png")
    for option, path in (("--out", out), ("--plot", png)):
        check_writable(option, path)  # before minutes of measuring, not after
    say = lambda message: typer.echo(message, err=True)  # noqa: E731
    records = []
    for value, cfgs in configs.items():
        if value is not None:
            say(f"{scaling[0]} = {value}")  # type: ignore[index]
        rec = run_comparison(cfgs, warmup, rounds, breakdown_rounds, memory, memory_steps, log=say)
        rec["scale"] = None if value is None else {"key": scaling[0], "value": value}  # type: ignore[index]
        records.append(rec)
    record = records[0] if scaling is None else {**records[0], "scale_key": scaling[0], "points": records}
    atomic.write_json(out, record)
    written = bench_plot(record, png)
    return record, out, written
