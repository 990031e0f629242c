"""Rebuild a finished (or interrupted) run from its folder: configuration, data, model, checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mtlbench.api.task import DataSplits
from mtlbench.config import resolve_config
from mtlbench.errors import ConfigError
from mtlbench.precision import Precision, pick_amp
from mtlbench.results import RunFolder
from mtlbench.runner import PreparedRun, prepare_run
from mtlbench.trainer import Trainer


@dataclass
class ReloadedRun:
    prepared: PreparedRun
    splits: DataSplits
    trainer: Trainer
    folder: RunFolder


def reload_run(run_dir: str | Path, checkpoint: str = "best", progress: bool = False) -> ReloadedRun:
    """The run in ``run_dir`` with the weights of ``checkpoints/<checkpoint>.pt`` loaded."""
    root = Path(run_dir)
    config_path = root / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{str(root)!r} is not a run folder (no config.yaml)")
    saved = yaml.safe_load(config_path.read_text()) or {}
    saved.pop("run_id", None)
    cfg = resolve_config(values=saved)
    prepared = prepare_run(cfg)
    folder = RunFolder(root, prepared.config.run_id())
    path = folder.checkpoint_path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    splits = prepared.task.prepare(progress=progress)
    model = prepared.model.to(prepared.device)
    model.load_state_dict(folder.load_checkpoint(checkpoint)["model"])
    precision = Precision.create(prepared.device, pick_amp(cfg.train.amp, prepared.device))
    trainer = Trainer(
        cfg, prepared.task, model, prepared.method.to(prepared.device), splits, folder, precision
    )
    return ReloadedRun(prepared, splits, trainer, folder)
