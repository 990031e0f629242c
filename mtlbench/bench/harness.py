"""One training step of a configured run, repeatable: the trainer's own ``train_step`` on one batch.

:func:`build_harness` goes through the same path as ``mtlbench run`` (``prepare_run``: the
configuration is resolved and checked, the model built from the configured seed) and builds the
run's :class:`~mtlbench.trainer.Trainer` over a run folder that writes nothing. The batch is the
first batch of the run's first epoch, so every method of one comparison steps on the same data
from the same initial weights.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mtlbench.api.task import DataSplits
from mtlbench.config import RunConfig
from mtlbench.precision import Precision, pick_amp
from mtlbench.runner import FollowerRunFolder, RunFolder, prepare_run
from mtlbench.trainer import Trainer, epoch_batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PhaseRecorder:
    """Records the wall time of the named phases of one step (nested names joined by ``/``)."""

    device: torch.device
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _stack: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        self._stack.append(name)
        key = "/".join(self._stack)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.times[key] += time.perf_counter() - t0
            self._stack.pop()

    def take(self) -> dict[str, float]:
        """The phases recorded since the last call, and a fresh start."""
        out = dict(self.times)
        self.times = defaultdict(float)
        return out


@dataclass
class StepHarness:
    """A trainer and one batch: :meth:`step` runs ``Trainer.train_step`` and returns its seconds."""

    trainer: Trainer
    batch: dict[str, torch.Tensor]
    recorder: PhaseRecorder | None = None
    skipped: int = 0

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    def record_phases(self, on: bool) -> None:
        """Time the step's phases (``forward``, ``backward`` and the method's own) from now on."""
        if on:
            self.recorder = PhaseRecorder(self.device)
            self.trainer.phase = self.recorder.phase
        else:
            from mtlbench.api.method import no_phase

            self.recorder = None
            self.trainer.phase = no_phase

    def step(self) -> float:
        synchronize(self.device)
        t0 = time.perf_counter()
        logs = self.trainer.train_step(self.batch)
        synchronize(self.device)
        elapsed = time.perf_counter() - t0
        self.trainer.state.global_step += 1
        self.skipped += logs is None
        return elapsed

    def phases(self) -> dict[str, float]:
        return {} if self.recorder is None else self.recorder.take()


def prepare_splits(config: RunConfig) -> DataSplits:
    """The task's data for ``config`` (shared by every method of one comparison)."""
    return prepare_run(config).task.prepare(progress=False)


def build_harness(config: RunConfig, splits: DataSplits | None = None) -> StepHarness:
    """The run's trainer (nothing written) and the first batch of its first epoch."""
    prepared = prepare_run(config)
    cfg = prepared.config
    if splits is None:
        splits = prepared.task.prepare(progress=False)
    device = prepared.device
    precision = Precision.create(device, pick_amp(cfg.train.amp, device))
    root = RunFolder.for_config(cfg)
    folder = FollowerRunFolder(root.root, root.run_id)
    trainer = Trainer(
        cfg, prepared.task, prepared.model.to(device), prepared.method.to(device), splits, folder, precision
    )
    indices = epoch_batches(len(splits.train), 1, cfg.train.batch_size, cfg.seed, 0)[0]
    batch = next(iter(trainer._loader(splits.train, [indices])))
    trainer.model.train()
    return StepHarness(trainer, batch)


def describe(config: RunConfig) -> dict[str, Any]:
    """The settings that decide a step's cost, for the JSON record."""
    tc = config.train
    return {
        "task": config.task,
        "method": config.method,
        "backbone": config.backbone,
        "backbone_args": dict(config.backbone_args),
        "method_args": dict(config.method_args),
        "task_args": dict(config.task_args),
        "batch_size": tc.batch_size,
        "amp": tc.amp,
        "device": tc.device,
    }
