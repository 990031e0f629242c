"""Experiment trackers users already run, fed from the same per-epoch records as ``metrics.jsonl``.

``train.loggers=[tensorboard,mlflow]`` (off by default; ``pip install 'mtlbench[tracking]'``):

* ``tensorboard``: event files in ``<run folder>/tensorboard/``;
* ``mlflow``: one MLflow run per mtlbench run, in experiment ``mtlbench-<task>``, tagged
  ``mtlbench.run_id``; the store is ``train.tracking_uri`` (a server ``http://…``, ``sqlite:///…`` or a
  folder ``file:///…``), by default ``sqlite:///<output_dir>/mlflow.db``.

Scalars are named ``<section>/<key>`` (``train/loss/seg``, ``val/score``, ``lr``, ``images_per_s``)
with the epoch as the step. A resumed run continues the same tracker run: records already in
``metrics.jsonl`` (kept up to the checkpoint's epoch) are written again first — TensorBoard discards
its older events from epoch 1 on (``purge_step``), MLflow receives only the epochs it lacks — so the
tracker always equals ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtlbench.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one ``metrics.jsonl`` record, by tracker name."""
    out: dict[str, float] = {}
    for section in ("train", "val"):
        for key, value in (record.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{section}/{key}"] = float(value)
    for key in ("lr", "images_per_s", "epoch_train_time_s"):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def check_loggers(config: Any) -> None:
    """Raise one clear line before anything is written when a chosen tracker's package is missing."""
    import importlib.util

    for name in config.train.loggers:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"train.loggers names {name!r} but its package is not installed "
                f"(pip install 'mtlbench[tracking]' or pip install {PACKAGES[name]})"
            )


def _records(folder: Any) -> list[dict[str, Any]]:
    path = folder.metrics_path
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TensorBoardLogger:
    def __init__(self, config: Any, folder: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(folder.root) / "tensorboard"), purge_step=1)
        for record in _records(folder):
            self.on_epoch_end(None, record)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        for key, value in scalars_of(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_uri(config: Any) -> str:
    return config.train.tracking_uri or f"sqlite:///{Path(config.output_dir).resolve() / 'mlflow.db'}"


class MLflowLogger:
    def __init__(self, config: Any, folder: Any) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=mlflow_uri(config))
        name = f"mtlbench-{config.task}"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`mtlbench.run_id` = '{folder.run_id}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id,
                run_name=Path(folder.root).name,
                tags={"mtlbench.run_id": folder.run_id, "mtlbench.folder": str(folder.root)},
            )
            self.run_id = run.info.run_id
            params = _flat_params(config.to_dict())
            for key, value in params.items():
                self.client.log_param(self.run_id, key, value)
        logged = self._last_logged_epoch()
        for record in _records(folder):
            if record["epoch"] > logged:
                self.on_epoch_end(None, record)

    def _last_logged_epoch(self) -> int:
        run = self.client.get_run(self.run_id)
        keys = list(run.data.metrics)
        if not keys:
            return 0
        return max(int(m.step) for m in self.client.get_metric_history(self.run_id, keys[0]))

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(record["epoch"]), _now_ms()
        metrics = [Metric(key, value, now, step) for key, value in scalars_of(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


@contextlib.contextmanager
def tracked(config: Any, folder: Any) -> Iterator[tuple[Any, ...]]:
    """The chosen trackers as trainer callbacks; closed (MLflow: FINISHED or FAILED) when training ends."""
    makers = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    loggers = [makers[name](config, folder) for name in config.train.loggers]
    try:
        yield tuple(loggers)
    except BaseException:
        for logger in loggers:
            logger.close(status="FAILED") if isinstance(logger, MLflowLogger) else logger.close()
        raise
    for logger in loggers:
        logger.close()
