"""Every registered task honours the task contract, and trains with every method and every backbone.

Tasks are taken from the registry (built-ins and plugins), like the backbone-contract tests take
backbones, so a new task family is covered as soon as it is registered. Each task runs on its own
``smoke`` preset (tiny data, a step or two): declaring one is part of the contract.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from mtlbench.api import DataConfig, TaskDefinition
from mtlbench.config import resolve_config
from mtlbench.registry import TASKS, list_backbones, list_methods, list_tasks
from mtlbench.runner import prepare_run, run_experiment
from tests.tiny import SMALL_BACKBONE_OPTIONS

TASK_NAMES = list_tasks()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the module: each task's data is generated once, not once per method."""
    return tmp_path_factory.mktemp("task-contract-cache")


def smoke_config(task: str, out: Path, cache: Path, method: str = "vanilla", backbone: str = "unet_small"):  # type: ignore[no-untyped-def]
    fixture = TASKS.get(task).obj.smoke_fixture(cache / f"{task}-fixture")  # tasks without embedded data
    overrides = [
        *(f"data.{k}={v}" for k, v in fixture.items()),
        f"output_dir={out / 'runs'}",
        f"data.cache_dir={cache}",
        "train.progress=false",
        *(
            f"backbone_args.{k}={list(v) if isinstance(v, tuple) else v}"
            for k, v in SMALL_BACKBONE_OPTIONS.get(backbone, {}).items()
        ),
    ]
    return resolve_config(overrides, task=task, method=method, backbone=backbone, preset="smoke")


def test_the_embedded_task_families_are_registered() -> None:
    assert {"thyroid", "multidigits", "twoshapes"} <= set(TASK_NAMES)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_task_declares_its_settings(task: str) -> None:
    cls = TASKS.get(task).obj
    assert issubclass(cls, TaskDefinition)
    assert dataclasses.is_dataclass(cls.Params) and issubclass(cls.Data, DataConfig)
    cls.Params()  # the defaults are valid
    cls.Data()
    assert "smoke" in cls.presets, f"task {task!r} declares no `smoke` preset for the contract tests"
    assert isinstance(cls.default_monitor, str) and cls.default_monitor_mode in ("max", "min")
    assert cls.summary_metrics and cls.shown_metrics()
    assert TASKS.get(task).description, "the class docstring's first line is the task's description"


@pytest.mark.parametrize("task", TASK_NAMES)
def test_task_contract_end_to_end(task: str, tmp_path: Path, shared_cache: Path) -> None:
    prepared = prepare_run(smoke_config(task, tmp_path, shared_cache))
    definition = prepared.task
    names = definition.task_names
    assert names and set(definition.loss_weights()) == set(names)
    splits = definition.prepare(progress=False)
    sample = splits.train[0]
    image = sample["image"]
    assert image.dtype == torch.float32 and image.shape[0] == definition.input_channels()
    if definition.input_size() is not None:
        assert tuple(image.shape[1:]) == tuple(definition.input_size())
    batch = {k: torch.stack([splits.train[i][k] for i in range(2)]) for k in sample}
    model = prepared.model
    output = model(batch["image"])
    assert set(output.outputs) == set(model.heads)
    losses = definition.compute_losses(output, batch)
    assert set(losses) == set(names)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    evaluator = definition.evaluator()
    with torch.no_grad():
        evaluator.update(model(batch["image"]), batch)
    metrics = evaluator.compute()
    expected = {
        definition.default_monitor,
        *(k for k, _ in definition.summary_metrics),
        *definition.shown_metrics(),
    }
    assert expected <= set(metrics), f"{task}: evaluator lacks {expected - set(metrics)}"
    assert math.isfinite(float(metrics[definition.default_monitor]))

    outcome = run_experiment(prepared.config, prepared=prepared)
    result = outcome.result
    assert result["monitor"]["metric"] == definition.default_monitor
    for split, values in result["metrics"].items():
        missing = {k for k, _ in definition.summary_metrics} - set(values)
        assert not missing, (split, missing)
    json.dumps(result)  # the whole result is plain JSON


def _skip_unavailable(method: str) -> None:
    if method == "libmtl":
        from mtlbench.libmtl_compat import import_libmtl

        try:
            import_libmtl("weighting")
        except ModuleNotFoundError:
            pytest.skip("LibMTL is not installed")


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_method_trains_on_every_task(
    task: str, method: str, tmp_path: Path, shared_cache: Path
) -> None:
    _skip_unavailable(method)
    outcome = run_experiment(smoke_config(task, tmp_path, shared_cache, method=method))
    result = outcome.result
    assert result["steps"] > 0 and result["skipped_steps"] == 0
    monitor = result["monitor"]["metric"]
    assert math.isfinite(float(result["metrics"]["val"][monitor]))
    first = json.loads(outcome.folder.metrics_path.read_text().splitlines()[0])
    assert all(v == v for v in first["train"].values()), first["train"]  # no NaN in the logs


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_backbone_trains_on_every_task(
    task: str, backbone: str, tmp_path: Path, shared_cache: Path
) -> None:
    cfg = smoke_config(task, tmp_path, shared_cache, backbone=backbone)
    outcome = run_experiment(cfg)
    assert outcome.result["steps"] > 0
    assert outcome.result["config"]["backbone"] == backbone
