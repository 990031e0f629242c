"""Methods side by side: the trainer's step timed in interleaved rounds, its phases, its memory.

Every method of a comparison gets the same configuration (task, backbone, data, batch, seed), so
the same initial weights and the same batch; only ``method`` and its ``method_args`` differ. A
method is named as in ``mtlbench run`` or with settings, ``rlar:every=4`` or
``rlar:subset=2,lambda_adv=0.5``, and each such spelling is its own row.

Timing: after ``warmup`` steps of each method, ``rounds`` rounds each step every method once in
turn, so a slow drift of a shared machine hits all methods alike. A row reports the median and
inter-quartile range of its step's seconds and its ratio to ``vanilla`` *per round* (the median of
the per-round ratios), and the ratio of the means over the same rounds — the figure for a method
whose steps are not alike (``rlar:every=4``: choose ``rounds`` a multiple of 4). Then
``breakdown_rounds`` further rounds time the step's named phases
(``forward``, ``backward``, ``optimizer`` and what the method names inside its backward — see
``StepInputs.phase``); they are separate so that the synchronisations they need on CUDA do not
touch the main figures. Memory: each method in its own process (:mod:`mtlbench.bench.memory`).
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from mtlbench.bench.allocator import retain_freed_blocks
from mtlbench.bench.harness import StepHarness, build_harness, describe, prepare_splits
from mtlbench.bench.memory import measure_in_process, measure_in_subprocess
from mtlbench.config import ConfigError, RunConfig, resolve_config
from mtlbench.environment import device_info, git_commit, versions

BASELINE = "vanilla"


@dataclass(frozen=True)
class MethodSpec:
    """A row of the comparison: a registered method and its settings."""

    label: str
    method: str
    args: dict[str, Any]


def parse_methods(text: str) -> list[MethodSpec]:
    """``"vanilla,rlar:every=4,rlar:subset=2;lambda_adv=0.5"`` → one spec per comma-separated item.

    Settings follow a colon as ``key=value`` pairs separated by ``;`` (values parsed as YAML).
    """
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        args: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in rest.split(";"))):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"--methods: {pair!r} in {item!r} is not key=value")
            args[key.strip()] = yaml.safe_load(value)
        specs.append(MethodSpec(item, name.strip(), args))
    if not specs:
        raise ConfigError("--methods: no method given")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--methods: a method is listed twice: {text!r}")
    return specs


def method_configs(
    specs: Sequence[MethodSpec], overrides: Sequence[str], **top_level: Any
) -> dict[str, RunConfig]:
    """One resolved configuration per row; every setting is checked before anything runs."""
    configs = {}
    for spec in specs:
        extra = [
            f"method_args.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in spec.args.items()
        ]
        configs[spec.label] = resolve_config(list(overrides) + extra, method=spec.method, **top_level)
    from mtlbench.runner import prepare_run

    # the method's and backbone's settings and the data are checked (ConfigError) and filled in
    return {label: prepare_run(cfg).config for label, cfg in configs.items()}


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def interleaved_times(
    harnesses: dict[str, StepHarness], warmup: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per step of every method, ``rounds`` interleaved rounds after ``warmup`` steps each.

    A method that runs out of memory leaves the comparison with that as its error."""
    errors: dict[str, str] = {}
    times: dict[str, list[float]] = {name: [] for name in harnesses}

    def attempt(name: str, record: bool) -> None:
        try:
            seconds = harnesses[name].step()
        except torch.OutOfMemoryError as exc:
            errors[name] = f"out of memory: {str(exc).splitlines()[0]}"
            harnesses[name].trainer.optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        if record:
            times[name].append(seconds)

    for name in harnesses:
        for _ in range(warmup):
            if name not in errors:
                attempt(name, record=False)
    for _ in range(rounds):
        for name in harnesses:
            if name not in errors:
                attempt(name, record=True)
    return times, errors


def phase_breakdown(harnesses: dict[str, StepHarness], rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds of each named phase per method over ``rounds`` interleaved rounds."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in harnesses}
    for harness in harnesses.values():
        harness.record_phases(True)
    try:
        for _ in range(rounds):
            for name, harness in harnesses.items():
                harness.step()
                samples[name].append(harness.phases())
    finally:
        for harness in harnesses.values():
            harness.record_phases(False)
    out = {}
    for name, rows in samples.items():
        keys = sorted({k for row in rows for k in row}, key=lambda k: (k.count("/"), k))
        out[name] = {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}
    return out


def summarise(
    times: dict[str, list[float]],
    errors: dict[str, str],
    phases: dict[str, dict[str, float]],
    memory: dict[str, dict[str, Any]],
    skipped: dict[str, int],
) -> list[dict[str, Any]]:
    """One row per method: median/IQR seconds, per-round ratio to vanilla, phases, memory."""
    base = times.get(BASELINE) if BASELINE not in errors else None
    base_memory = memory.get(BASELINE, {}).get("peak_mb")
    rows = []
    for name, values in times.items():
        row: dict[str, Any] = {"method": name}
        if name in errors:
            row["error"] = errors[name]
        if values:
            q1, median, q3 = _quartiles(values)
            row.update(
                median_s=median,
                iqr_s=q3 - q1,
                mean_s=statistics.fmean(values),
                rounds=len(values),
                skipped_steps=skipped.get(name, 0),
            )
            if base and len(base) == len(values):
                ratios = [v / b for v, b in zip(values, base)]
                r1, ratio, r3 = _quartiles(ratios)
                # the mean's ratio is the one for a method whose steps differ (RLAR every k steps)
                row.update(
                    ratio=ratio,
                    ratio_iqr=r3 - r1,
                    mean_ratio=statistics.fmean(values) / statistics.fmean(base),
                )
        if name in phases:
            row["phases_s"] = phases[name]
        if name in memory:
            mem = memory[name]
            row["memory"] = mem
            if "peak_mb" in mem and base_memory:
                row["memory_ratio"] = mem["peak_mb"] / base_memory
        rows.append(row)
    return rows


def run_comparison(
    configs: dict[str, RunConfig],
    warmup: int = 2,
    rounds: int = 10,
    breakdown_rounds: int = 3,
    memory: str = "subprocess",
    memory_steps: int = 3,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Time, break down and measure the memory of every configured method; the JSON record.

    On glibc the steps are timed with freed blocks kept on the heap (:mod:`mtlbench.bench.allocator`;
    the record's ``allocator``), except with ``memory="inline"``, whose resident set in this process
    must follow the live tensors."""
    if BASELINE not in configs:
        raise ConfigError(f"--methods must include {BASELINE!r}: every ratio is taken against it")
    allocator = retain_freed_blocks() if memory != "inline" else None
    first = next(iter(configs.values()))
    log(f"preparing the data of task {first.task!r}")
    splits = prepare_splits(first)
    harnesses: dict[str, StepHarness] = {}
    build_errors: dict[str, str] = {}
    for name, cfg in configs.items():
        try:
            harnesses[name] = build_harness(cfg, splits)
        except torch.OutOfMemoryError as exc:
            build_errors[name] = f"out of memory: {str(exc).splitlines()[0]}"
    log(f"timing {len(harnesses)} methods: {warmup} warm-up steps each, {rounds} interleaved rounds")
    times, errors = interleaved_times(harnesses, warmup, rounds)
    errors.update(build_errors)
    for name in build_errors:
        times[name] = []
    live = {name: h for name, h in harnesses.items() if name not in errors}
    phases = phase_breakdown(live, breakdown_rounds) if breakdown_rounds > 0 else {}
    skipped = {name: h.skipped for name, h in harnesses.items()}
    device = next(iter(harnesses.values())).device if harnesses else torch.device("cpu")
    del harnesses, live
    mem: dict[str, dict[str, Any]] = {}
    if memory != "off":
        for name, cfg in configs.items():
            log(f"memory of {name} ({memory})")
            mem[name] = (
                measure_in_subprocess(cfg, memory_steps)
                if memory == "subprocess"
                else measure_in_process(cfg, memory_steps)
            )
    return {
        "kind": "mtlbench bench",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": device_info(device),
        "versions": versions(),
        "settings": {
            "warmup": warmup,
            "rounds": rounds,
            "breakdown_rounds": breakdown_rounds,
            "memory": memory,
            "memory_steps": memory_steps,
            "threads": torch.get_num_threads(),
            "runs": {name: describe(cfg) for name, cfg in configs.items()},
        },
        "rows": summarise(times, errors, phases, mem, skipped),
        "allocator": allocator,
    }
