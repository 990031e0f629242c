"""The thyroid family's own commands: ``ablate-features`` (Table 5) and ``data check`` layouts.

Imported when the CLI starts, so only typer is imported here; the work happens inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mtlbench.cli_support import fail, user_errors

#: The layouts ``mtlbench data check --format`` reads for this family (see ``readers/``).
DATA_FORMATS = ("thyroidxl", "aimi", "folder", "ddti", "tn3k")


def check_data_set(root: Path, data_format: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """Read every sample: (the printed report, the JSON report, the number of problems)."""
    from .readers.check import check_dataset, format_report

    report = check_dataset(root, data_format, **options)
    return format_report(report), report.to_dict(), len(report.problems)


def ablate_features(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<task>/<method>-<backbone>-<id>).")],
    split: Annotated[str, typer.Option(help="val, test or external.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
) -> None:
    """Leave-one-feature-out (paper Table 5): zero each clinical feature's classifier weight, re-evaluate."""
    try:
        from mtlbench.errors import ConfigError
        from mtlbench.reload import reload_run

        run = reload_run(run_dir, checkpoint)
        if "clin" not in run.prepared.task.task_names:
            params = run.prepared.task.params
            guidance = str(params.clinical_guidance).lower()
            raise ConfigError(
                f"{run_dir} was trained without the clinically guided slice (task_args.tasks="
                f"{list(params.tasks)}, task_args.clinical_guidance={guidance}): "
                "its first 13 embedding dimensions carry no clinical feature, so there is nothing to ablate"
            )
        datasets = run.splits.evaluation_splits()
        if split not in datasets:
            raise ConfigError(f"split {split!r} is not available for this run (has: {', '.join(datasets)})")
    except user_errors() as exc:
        fail(str(exc))
    from mtlbench import atomic

    from .ablations import format_feature_ablation, leave_one_feature_out

    try:
        rows = leave_one_feature_out(lambda: run.trainer.evaluate(datasets[split]), run.trainer.model)
    except ValueError as exc:
        fail(str(exc))
    out = run.folder.root / f"feature_ablation_{split}.json"
    atomic.write_json(out, {"split": split, "checkpoint": checkpoint, "rows": rows})
    typer.echo(format_feature_ablation(rows))
    typer.echo(f"written: {out}")


def register_commands(app: typer.Typer) -> None:
    app.command("ablate-features")(ablate_features)
