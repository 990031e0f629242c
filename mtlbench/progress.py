"""A rich progress bar for training: epoch, step, the running losses and images/s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainingProgress:
    """Live bar when ``live`` (``train.progress``); one summary line per epoch either way.

    ``metrics`` are the validation metrics the epoch line shows (the task's ``shown_metrics()``),
    followed by the monitored one.
    """

    def __init__(
        self, console: Console | None = None, live: bool = True, metrics: tuple[str, ...] = ()
    ) -> None:
        self.console = console or Console(stderr=True)
        self.live = live
        self.metrics = metrics
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task: Any = None

    def __enter__(self) -> TrainingProgress:
        if self.live:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self._progress.stop()

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.live:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(
            "train", total=steps, epoch=f"{epoch}/{epochs}", losses="", speed=""
        )

    def update(self, logs: dict[str, float], images_per_s: float) -> None:
        if not self.live:
            return
        # the task losses and any method penalty (e.g. RLAR's), the terms the step minimises
        shown = {
            k.split("/")[-1]: v for k, v in logs.items() if k.startswith("loss/") or k.endswith("_penalty")
        }
        text = " ".join(f"{k} {v:.3f}" for k, v in shown.items())
        self._progress.update(self._task, advance=1, losses=text, speed=f"{images_per_s:.0f} img/s")

    def end_epoch(self, record: dict[str, Any], monitor: str) -> None:
        val = record["val"]
        parts = [f"epoch {record['epoch']}"]
        for key in (*self.metrics, monitor):
            if key in val and isinstance(val[key], (int, float)):
                parts.append(f"val {key} {val[key]:.3f}")
        parts.append(f"{record['images_per_s']:.0f} img/s")
        if record["best"]:
            parts.append("[green]best[/green]")
        self.console.print("  ".join(dict.fromkeys(parts)))


@contextmanager
def counting_bar(label: str, enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for ``total`` items; yields ``advance(n)`` (a no-op when disabled)."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import TimeRemainingColumn

    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
