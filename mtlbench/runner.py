"""Run one experiment end to end: validate, build, train (or resume), evaluate, record.

Everything that can be wrong with the input is checked in :func:`prepare_run` before a single
file is written; training resumes from the last checkpoint when the run folder has one.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlbench import atomic, distributed
from mtlbench.api.method import MultiTaskMethod
from mtlbench.api.task import TaskDefinition
from mtlbench.config import ConfigError, RunConfig
from mtlbench.environment import device_info, git_commit, versions
from mtlbench.model import MultiTaskModel
from mtlbench.precision import Precision, pick_amp, pick_device
from mtlbench.registry import create_backbone
from mtlbench.resolve import ResolvedRun, resolve_run
from mtlbench.results import RunFolder, is_indexed, run_index_entry, update_index
from mtlbench.tracking import check_loggers, tracked
from mtlbench.trainer import Trainer, seed_everything


@dataclass
class PreparedRun:
    resolved: ResolvedRun
    task: TaskDefinition
    method: MultiTaskMethod
    model: MultiTaskModel
    device: torch.device
    pretrained: Any = None  # the nnU-Net checkpoint's match report, if one was loaded

    @property
    def config(self) -> RunConfig:
        return self.resolved.config


@dataclass
class RunOutcome:
    folder: RunFolder
    result: dict[str, Any]
    resumed: bool
    already_finished: bool


class FollowerRunFolder(RunFolder):
    """The run folder as seen by ranks other than 0 under ``torchrun``: it reads (checkpoints to
    resume from, the finished result) and never writes; rank 0 writes everything."""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        yield

    def create(self, config: RunConfig) -> None:
        pass

    def reset(self) -> None:
        pass

    def log_metrics(self, record: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, epochs_done: int) -> None:
        pass

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        pass

    def write_result(self, result: dict[str, Any]) -> None:
        pass


def run_folder(config: RunConfig) -> RunFolder:
    """This process's view of the run folder: the writer on rank 0 (or without torchrun)."""
    folder = RunFolder.for_config(config)
    return folder if distributed.is_main_process() else FollowerRunFolder(folder.root, folder.run_id)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MTLBENCH_CACHE", Path.home() / ".cache" / "mtlbench"))


def prepare_run(config: RunConfig) -> PreparedRun:
    """Resolve and validate everything, and build the model; raises before any file is written."""
    resolved = resolve_run(config)
    cfg = resolved.config
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    task = resolved.task_entry.obj(resolved.task_params, cfg.data, cfg.seed, cache_dir)
    if cfg.data.folds is not None and not task.supports_folds:
        raise ConfigError(
            f"task {cfg.task!r} has fixed splits; data.folds (and so `mtlbench cv`) is not supported for it"
        )
    if cfg.data.folds is not None and (cfg.data.folds < 2 or not 0 <= cfg.data.fold < cfg.data.folds):
        raise ConfigError(
            f"data.fold must be in 0..{cfg.data.folds - 1} for data.folds={cfg.data.folds} "
            f"(and data.folds at least 2), got data.fold={cfg.data.fold}"
        )
    task.check_data()
    try:
        method = resolved.method_entry.obj(task.task_names, resolved.method_params)
    except ValueError as exc:
        raise ConfigError(f"method_args: {exc}") from None
    distributed.check_divisible("train.batch_size", cfg.train.batch_size)
    device = distributed.setup(pick_device(cfg.train.device))  # torchrun: cuda:LOCAL_RANK or the CPU
    seed_everything(cfg.seed)
    try:
        backbone = create_backbone(cfg.backbone, in_channels=task.input_channels(), **cfg.backbone_args)
    except (TypeError, ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"backbone_args for {cfg.backbone!r}: {exc}") from None
    multiple = backbone.input_multiple()
    size = task.input_size()
    if size is not None and any(side % multiple for side in size):
        raise ConfigError(
            f"task {cfg.task!r} feeds {size[0]}×{size[1]} inputs (its data settings), which is not a "
            f"multiple of {multiple}, the deepest stride of backbone {cfg.backbone!r}"
        )
    model = MultiTaskModel(backbone, task.build_heads(backbone.contract))
    pretrained = None
    if cfg.nnunet_checkpoint is not None:
        if cfg.backbone_args.get("pretrained"):
            raise ConfigError("set either nnunet_checkpoint or backbone_args.pretrained, not both")
        if not Path(cfg.nnunet_checkpoint).is_file():
            raise ConfigError(f"nnunet_checkpoint {cfg.nnunet_checkpoint!r} does not exist")
        from mtlbench.backbones.nnunet_checkpoint import load_nnunet_checkpoint

        try:
            pretrained = load_nnunet_checkpoint(model, cfg.nnunet_checkpoint, task.segmentation_head)
        except ValueError as exc:
            raise ConfigError(f"nnunet_checkpoint: {exc}") from None
    return PreparedRun(resolved, task, method, model, device, pretrained)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss * scale / 2**20, "process_max_rss"


def apply_determinism(deterministic: bool, device: torch.device) -> None:
    """``train.deterministic`` on a GPU: deterministic cuDNN and PyTorch kernels and a fixed cuBLAS
    workspace, so reruns are bit-identical (slower: no cuDNN autotuning, some kernels replaced by
    deterministic ones; an op without a deterministic kernel warns instead of failing). On the CPU
    the kernels used here are deterministic already and nothing is changed."""
    torch.backends.cudnn.benchmark = not deterministic
    if device.type != "cuda":
        return
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # cuBLAS reads this when its handle is created: before the first matrix product on the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def run_experiment(
    config: RunConfig,
    restart: bool = False,
    progress: Any = None,
    prepared: PreparedRun | None = None,
    callbacks: tuple[Any, ...] = (),
) -> RunOutcome:
    """Train (or resume) the configured run and write its results; see :mod:`mtlbench.results`.

    Nothing is written before the data are prepared and ``train.monitor`` is checked on one
    validation batch; the run folder is then locked for the rest of the run.
    """
    prep = prepared or prepare_run(config)
    cfg = prep.config
    folder = run_folder(cfg)
    if folder.is_finished() and not restart:
        return _finished(folder, cfg)

    started = time.perf_counter()
    main = distributed.is_main_process()
    with distributed.main_process_first():  # rank 0 fills a data cache, the others read it
        splits = prep.task.prepare(progress=cfg.train.progress and main)
    device = prep.device
    apply_determinism(cfg.train.deterministic, device)
    model = prep.model.to(device)
    method = prep.method.to(device)
    precision = Precision.create(device, pick_amp(cfg.train.amp, device))
    trainer = Trainer(cfg, prep.task, model, method, splits, folder, precision)
    trainer.check_monitor()
    check_loggers(cfg)  # a tracker whose package is missing: one clear line, nothing written
    try:
        if main:
            folder.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise atomic.cannot_write(folder.root, exc) from None
    with folder.lock():
        # another process finished it while we prepared (rank 0 decides for every rank)
        if distributed.broadcast_object(folder.is_finished() and not restart):
            return _finished(folder, cfg)
        folder.create(cfg)
        if restart:
            folder.reset()
        if prep.pretrained is not None and main:
            atomic.write_text(
                folder.root / "pretrained_report.txt", prep.pretrained.format_report(verbose=True)
            )
        distributed.barrier()  # rank 0 has reset the folder before any rank looks for a checkpoint
        resumed = folder.has_checkpoint()
        if resumed:
            trainer.restore(folder.load_checkpoint("last"))
        distributed.broadcast_module_(model)  # every replica starts from rank 0's weights
        if distributed.is_distributed():
            callbacks = (distributed.ReplicaCheck(model, method), *callbacks)  # before any that stop
        folder.truncate_metrics(trainer.state.epoch)  # 0 epochs kept when starting from scratch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        tracking = tracked(cfg, folder) if main else contextlib.nullcontext(())
        with tracking as loggers:  # TensorBoard / MLflow, fed the metrics.jsonl records (rank 0)
            trainer.fit(progress=progress, callbacks=(*callbacks, *loggers))
        distributed.barrier()  # rank 0's last checkpoints are on disk before any rank reads them

        # The best checkpoint by the monitored metric; the last one if the metric was never finite.
        final = "best" if folder.checkpoint_path("best").is_file() else "last"
        model.load_state_dict(folder.load_checkpoint(final)["model"])
        metrics = {name: trainer.evaluate(dataset) for name, dataset in splits.evaluation_splits().items()}
        state = trainer.state
        peak, peak_kind = peak_memory_mb(device)
        result = {
            "run_id": folder.run_id,
            "task": cfg.task,
            "method": cfg.method,
            "backbone": cfg.backbone,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "best_epoch": state.best_epoch,
            "evaluated_checkpoint": final,
            "monitor": {
                "metric": cfg.train.monitor,
                "mode": cfg.train.monitor_mode,
                "best": state.best_value,
            },
            "metrics": metrics,
            "epochs": state.epoch,
            "steps": state.global_step,
            "skipped_steps": state.skipped_steps,
            "train_time_s": state.train_time_s,
            "wall_time_s": time.perf_counter() - started,
            "mean_step_time_s": state.step_time_sum / max(state.step_count, 1),
            "peak_memory_mb": peak,
            "peak_memory_kind": peak_kind,
            "precision": precision.mode,
            "resumed": resumed,
            "pretrained": None if prep.pretrained is None else prep.pretrained.to_dict(),
            "data": splits.info,
            "versions": versions(),
            "device": device_info(device),
            "git_commit": git_commit(),
            "config": cfg.to_dict(),
            "non_identity_keys": list(cfg.non_identity_keys()),
        }
        folder.write_result(result)
        if main:
            update_index(cfg.output_dir, run_index_entry(result, folder.root))
    return RunOutcome(folder, result, resumed=resumed, already_finished=False)


def _finished(folder: RunFolder, cfg: RunConfig) -> RunOutcome:
    """A finished run's outcome; indexed again if the index lost it (e.g. it was corrupt)."""
    result = folder.read_result()
    if distributed.is_main_process() and not is_indexed(cfg.output_dir, folder.run_id):
        update_index(cfg.output_dir, run_index_entry(result, folder.root))
    return RunOutcome(folder, result, resumed=False, already_finished=True)
