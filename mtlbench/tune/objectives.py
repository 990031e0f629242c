"""What a study optimises: validation metrics of the run's best checkpoint, and its costs.

Names (``--objective NAME[:max|min]``, repeat the option or separate by commas for several):

* a validation metric of the task (``score``, ``dice``, ``f1``, …: the task's ``default_monitor`` and
  ``summary_metrics``), optionally written ``val.NAME``; measured on the best checkpoint's validation
  split, as in ``result.json``; direction: the task's monitor direction for the monitor, else ``max``;
* ``step_time``: the mean training step time in seconds (``mean_step_time_s``), minimised;
* ``peak_memory``: the peak memory in MiB (``peak_memory_mb``), minimised.

One objective: pruned each epoch on the same validation metric (when it is one). Several: no
pruning (Optuna cannot prune multi-objective studies); the Pareto front is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlbench.errors import ConfigError

COSTS = {"step_time": "mean_step_time_s", "peak_memory": "peak_memory_mb"}


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # maximize | minimize
    metric: str | None  # a validation metric, or None for a cost
    cost_key: str | None = None

    def value(self, result: dict[str, Any]) -> float:
        if self.metric is not None:
            return float(result["metrics"]["val"][self.metric])
        return float(result[self.cost_key])


def task_metrics(task_cls: type) -> list[str]:
    names = [task_cls.default_monitor, *(k for k, _ in task_cls.summary_metrics), *task_cls.progress_metrics]
    return list(dict.fromkeys(names))


def parse_objectives(
    specs: list[str], task_cls: type, monitor: str | None, monitor_mode: str | None
) -> list[Objective]:
    """``["score", "step_time"]`` → objectives; an unknown name or direction raises one clear line."""
    items = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    metrics = task_metrics(task_cls)
    monitor = monitor or task_cls.default_monitor
    if monitor not in metrics:
        metrics.append(monitor)
    if not items:
        items = [monitor]
    available = ", ".join([*metrics, *COSTS])
    out: list[Objective] = []
    for item in items:
        name, _, direction = item.partition(":")
        name = name.removeprefix("val.")
        if direction not in ("", "max", "min"):
            raise ConfigError(f"objective {item!r}: direction must be max or min, got {direction!r}")
        if name in COSTS:
            if direction == "max":
                raise ConfigError(f"objective {item!r}: a cost is minimised")
            out.append(Objective(name, "minimize", None, COSTS[name]))
            continue
        if name not in metrics:
            raise ConfigError(
                f"unknown objective {item!r} for task {task_cls.__name__} (available: {available})"
            )
        default = (monitor_mode or task_cls.default_monitor_mode) if name == monitor else "max"
        chosen = direction or default
        out.append(Objective(name, "maximize" if chosen == "max" else "minimize", name))
    if len({o.name for o in out}) != len(out):
        raise ConfigError(f"objectives {', '.join(items)} name the same quantity twice")
    return out
