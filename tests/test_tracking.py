"""TensorBoard event files and an MLflow run hold exactly the records of ``metrics.jsonl``, also
across an interrupted and resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtlbench.config import resolve_config
from mtlbench.runner import run_experiment
from mtlbench.tracking import scalars_of
from mtlbench.trainer import StopAfterEpochs, StopTraining
from tests.tiny import core_run_overrides


def test_tensorboard_and_mlflow_equal_metrics_jsonl_across_a_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install 'mtlbench[tracking]'")
    pytest.importorskip("mlflow", reason="pip install 'mtlbench[tracking]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = core_run_overrides(
        tmp_path, **{"train.loggers": "[tensorboard,mlflow]", "train.diagnostics_every": 0}
    )
    cfg = resolve_config(overrides)
    with pytest.raises(StopTraining):
        run_experiment(cfg, callbacks=(StopAfterEpochs(2),))
    outcome = run_experiment(cfg)
    assert outcome.resumed and outcome.result["epochs"] == 3
    records = [json.loads(line) for line in outcome.folder.metrics_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    expected = {(key, r["epoch"]): value for r in records for key, value in scalars_of(r).items()}
    assert ("val/score", 3) in expected and ("train/loss/mask", 1) in expected

    events = EventAccumulator(str(outcome.folder.root / "tensorboard"))
    events.Reload()
    from_tb = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert from_tb.keys() == expected.keys()
    assert all(from_tb[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items())  # float32 in TB

    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("mtlbench-twoshapes").experiment_id],
        filter_string=f"tags.`mtlbench.run_id` = '{outcome.folder.run_id}'",
    )
    assert run.info.status == "FINISHED"
    from_mlflow = {
        (key, m.step): m.value
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
    }
    assert from_mlflow == pytest.approx(expected)  # each epoch once, although the run was resumed
    assert run.data.params["train.lr"] == str(cfg.train.lr)


def test_an_unknown_logger_is_refused(tmp_path: Path) -> None:
    from mtlbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.loggers: unknown \['wandb'\]"):
        resolve_config(core_run_overrides(tmp_path, **{"train.loggers": "[wandb]"}))
