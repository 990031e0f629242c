"""The common trainer: one loop for every method, backbone and task.

Epochs × steps per epoch, batches drawn with replacement by a generator seeded per epoch (so a
resumed run draws exactly the batches an uninterrupted one would), validation every epoch, the
best checkpoint by a configurable validation metric, the last checkpoint every epoch for resuming.
The method owns the backward pass; the trainer owns everything else (autocast, loss scaling,
clipping, the optimizer step, logging).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mtlbench import batch_parts, distributed, second_order
from mtlbench.api.method import MultiTaskMethod, StepInputs, no_phase
from mtlbench.api.task import DataSplits, TaskDefinition
from mtlbench.config import RunConfig
from mtlbench.model import ModelOutput, MultiTaskModel, heads_read_only_their_inputs
from mtlbench.optim import build_optimizer, build_scheduler
from mtlbench.precision import Precision
from mtlbench.results import RunFolder


class NonFiniteLossError(FloatingPointError):
    """A task loss became NaN or infinite outside fp16 loss scaling."""


class StopTraining(Exception):
    """Raised by a callback to end training early (used to simulate an interruption in tests)."""


@dataclass
class TrainState:
    epoch: int = 0  # the next epoch to run
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    skipped_steps: int = 0
    step_time_sum: float = 0.0
    step_count: int = 0
    train_time_s: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(n: int, steps: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices for one epoch: ``steps`` batches drawn with replacement, seeded by (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    idx = torch.randint(0, n, (steps, batch_size), generator=gen)
    return idx.tolist()


def eval_batches(
    n: int, batch_size: int, max_batches: int | None, seed: int = 0, epoch: int | None = None
) -> list[list[int]]:
    """Batches of an evaluation pass: the whole split in order, or with ``max_batches`` (and an
    ``epoch``) a seeded draw without replacement that differs every epoch, never the same first
    samples of the file order."""
    order = list(range(n))
    if max_batches is not None and epoch is not None and max_batches * batch_size < n:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (epoch + 1))
        order = sorted(torch.randperm(n, generator=gen)[: max_batches * batch_size].tolist())
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches if max_batches is None else batches[:max_batches]


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, numbers and lists, so a checkpoint loads with
    ``weights_only=True`` (numpy's state array and Python's tuples are not allowed there)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopAfterEpochs:
    """A callback that ends training after ``n`` epochs of one ``fit`` call, as an interruption would
    (the last checkpoint is on disk): how tests interrupt a run."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.done += 1
        if self.done >= self.n:
            raise StopTraining(f"stopped after {self.done} epoch(s) as requested")


def shared_gradient_cosines(
    losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter], scale: Any
) -> dict[str, float]:
    """Cosine of every task pair's gradients on the shared parameters (``diag_cos/<a>-<b>``)."""
    from mtlbench.api.gradients import pairwise_cosines, task_gradient_matrix

    names = list(losses)
    grads = task_gradient_matrix([scale(losses[n]) for n in names], shared)
    return {f"diag_{k}": v for k, v in pairwise_cosines(grads, names).items()}


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class SubsetResult(NamedTuple):
    """The subset the step's forward ran apart: its indices (in the batch the step was given), its
    losses and representations, and the batch in the order the forward ran it (the subset first,
    :func:`mtlbench.batch_parts.subset_first`), which every output of that forward follows."""

    indices: torch.Tensor
    losses: dict[str, torch.Tensor]
    representations: dict[str, torch.Tensor | list[torch.Tensor]]
    batch: dict[str, torch.Tensor]
    order: torch.Tensor


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        task: TaskDefinition,
        model: MultiTaskModel,
        method: MultiTaskMethod,
        splits: DataSplits,
        folder: RunFolder,
        precision: Precision,
    ) -> None:
        self.config = config
        self.task = task
        self.model = model
        self.method = method
        self.splits = splits
        self.folder = folder
        self.precision = precision
        self.device = precision.device
        tc = config.train
        params = list(model.parameters()) + [p for p in method.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, tc)
        self.scheduler = build_scheduler(self.optimizer, tc)  # stepped once per epoch
        self.state = TrainState()
        self.weights = task.loss_weights()
        self._cut_points_valid: bool | None = None
        #: ``mtlbench bench`` swaps in a timer that records the step's phases.
        self.phase: Callable[[str], contextlib.AbstractContextManager[None]] = no_phase
        self._diagnostics_time = 0.0

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "precision": self.precision.state_dict(),
            "state": asdict(self.state),
            "rng": _rng_state(),
            "run_id": self.folder.run_id,
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:  # absent from checkpoints written before schedules existed
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.precision.load_state_dict(ckpt["precision"])
        self.state = TrainState(**ckpt["state"])
        _set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ data
    def _loader(self, dataset: Dataset, batches: list[list[int]]) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield move(batch, self.device)

    # ------------------------------------------------------------------ one step
    def forward_losses(self, batch: dict[str, torch.Tensor]) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
        """The training forward and the task losses, attached to the graph.

        The backbone runs under the run's autocast; the heads and losses too, except under fp16 for
        methods that need representation gradients, which get them in float32
        (:meth:`Precision.heads_in_float32`). The heads consume cut points of the features
        (``ModelOutput.head_inputs``).
        """
        return self._forward(batch, None)[:2]

    def _forward(
        self, batch: dict[str, torch.Tensor], subset: torch.Tensor | None
    ) -> tuple[ModelOutput, dict[str, torch.Tensor], SubsetResult | None]:
        """:meth:`forward_losses`; with ``subset``, the batch runs subset-first and the heads run on
        those samples apart from the rest (:mod:`mtlbench.batch_parts`): the subset's own losses
        come back too, and the outputs follow ``SubsetResult.order``."""
        layers = self.method.second_order_layers(self.state.global_step)
        with second_order.kernels(layers != "none"):
            return self._forward_parts(batch, subset, backbone_kernels=layers == "all")

    def _forward_parts(
        self, batch: dict[str, torch.Tensor], subset: torch.Tensor | None, backbone_kernels: bool
    ) -> tuple[ModelOutput, dict[str, torch.Tensor], SubsetResult | None]:
        order = None
        if subset is not None:
            order = batch_parts.subset_first(subset, len(batch["image"]))
            batch = batch_parts.take(batch, order)
        with self.precision.autocast(), second_order.kernels(backbone_kernels):
            features = list(self.model.backbone(batch["image"]))
        if subset is None or order is None:
            return (*self._heads_and_losses(features, batch), None)
        self.model.deepest_feeds_other_levels(features)  # decided on the whole batch's graph
        sizes = [len(subset), len(order) - len(subset)]
        # slices, not gathers: their backward is one concatenation per level
        parts = [f.split(sizes) for f in features]
        pixels = sizes[0] * batch["image"][0, 0].numel()
        with second_order.kernels(second_order.active() and pixels >= second_order.MIN_SUBSET_PIXELS):
            sub_output, sub_losses = self._heads_and_losses(
                [p[0] for p in parts], {k: v[: sizes[0]] for k, v in batch.items()}
            )
        # only the subset's graph is differentiated twice: the rest runs PyTorch's own layers
        with self.precision.heads_autocast(self.method.needs.representation_grads):
            with second_order.kernels(False):
                rest_output = self._heads([p[1] for p in parts])
            outputs = batch_parts.concatenate([sub_output.outputs, rest_output.outputs], sizes)
            output = ModelOutput(features, outputs)
            losses = self.task.compute_losses(output, batch)
        return output, losses, SubsetResult(subset, sub_losses, sub_output.representations, batch, order)

    def _heads_and_losses(
        self, features: list[torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
        with self.precision.heads_autocast(self.method.needs.representation_grads):
            output = self._heads(features)
            losses = self.task.compute_losses(output, batch)
        return output, losses

    def _heads(self, features: list[torch.Tensor]) -> ModelOutput:
        """The heads on cut points of ``features``, in float32 where the method needs it (call
        inside ``precision.heads_autocast``)."""
        float32 = self.precision.heads_in_float32(self.method.needs.representation_grads)
        return self.model.heads_on_cut_points(features, float32)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """Forward, the method's backward, clipping, optimizer step. ``None`` if fp16 skipped it."""
        self.optimizer.zero_grad(set_to_none=True)
        subset = self.method.subset_for_step(self.state.global_step, len(batch["image"]))
        with self.phase("forward"):
            output, losses, subset_result = self._forward(batch, subset)
        if subset_result is not None:
            batch = subset_result.batch  # the order the outputs follow
        losses = distributed.global_loss_values(losses)  # torchrun: the global batch's values
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
        if bad:
            if self.precision.mode == "fp16":
                return None
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.state.epoch + 1}, step {self.state.global_step + 1}: {bad}; "
                "lower train.lr, set train.grad_clip, or check the data"
            )
        every = self.config.train.diagnostics_every
        diagnostics = every > 0 and self.state.global_step % every == 0
        diag_logs: dict[str, float] = {}
        if diagnostics:
            t0 = time.perf_counter()
            diag_logs = shared_gradient_cosines(losses, self.model.shared_parameters(), self.precision.scale)
            self._diagnostics_time += time.perf_counter() - t0
        inputs = StepInputs(
            losses=losses,
            weights=self.weights,
            shared_parameters=self.model.shared_parameters(),
            representations=output.representations,
            step=self.state.global_step,
            scale=self.precision.scale,
            head_parameters=self.model.head_parameters(),
            loss_scale=self.precision.loss_scale,
            diagnostics=diagnostics,
            parameter_groups=self.model.parameter_groups() if diagnostics else {},
            phase=self.phase,
            head_inputs=output.head_inputs if self._heads_read_only_their_inputs(losses, output) else (),
            subset_forward=lambda indices: self._subset_forward(output, batch, indices, subset_result),
        )
        with self.phase("backward"):
            logs = dict(self.method.backward(inputs))
        distributed.average_gradients_(p for group in self.optimizer.param_groups for p in group["params"])
        logs.update(diag_logs)
        with self.phase("optimizer"):
            if self.config.train.grad_clip is not None:
                self.precision.unscale(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
            stepped = self.precision.step(self.optimizer)
        if not stepped:
            return None
        if self.method.needs.extra_forward:
            with self.phase("after step"):
                logs.update(self.method.after_step(lambda: self._losses_without_grad(batch)))
        out = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        out.update(logs)
        return out

    def _heads_read_only_their_inputs(self, losses: dict[str, torch.Tensor], output: ModelOutput) -> bool:
        """Checked once per trainer (the architecture does not change): whether methods may take
        per-task gradients through ``head_inputs`` (see :func:`heads_read_only_their_inputs`)."""
        if not output.head_inputs:  # the heads ran on parts of the batch: no cut points
            return False
        if self._cut_points_valid is None:
            self._cut_points_valid = heads_read_only_their_inputs(
                losses.values(), output.head_inputs, self.model.shared_parameters()
            )
        return self._cut_points_valid

    def _subset_forward(
        self,
        output: ModelOutput,
        batch: dict[str, torch.Tensor],
        indices: torch.Tensor,
        ran: SubsetResult | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | list[torch.Tensor]]]:
        """The heads and task losses on ``indices`` of the batch only, from the slices of this
        step's backbone features (so their gradients reach the backbone): ``StepInputs.subset_forward``.
        ``ran`` is the subset the step's forward already ran apart; those indices cost nothing, and
        others are found where that forward put them (``output`` and ``batch`` follow ``ran.order``)."""
        if ran is not None:
            if torch.equal(ran.indices.to(indices.device), indices):
                return ran.losses, ran.representations
            indices = torch.argsort(ran.order.to(indices.device))[indices]
        with second_order.kernels(self.method.second_order_layers(self.state.global_step) != "none"):
            return self._subset_heads(output, batch, indices)

    def _subset_heads(
        self, output: ModelOutput, batch: dict[str, torch.Tensor], indices: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | list[torch.Tensor]]]:
        backbone_features = (
            [*output.features[:-1], output.head_inputs[-1]] if output.head_inputs else output.features
        )
        sub, losses = self._heads_and_losses(
            [f.index_select(0, indices) for f in backbone_features], batch_parts.take(batch, indices)
        )
        return losses, sub.representations

    @torch.no_grad()
    def _losses_without_grad(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self.precision.autocast():
            with second_order.kernels(False):
                output = self.model(batch["image"])
            return distributed.global_loss_values(self.task.compute_losses(output, batch))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self,
        dataset: Dataset,
        max_batches: int | None = None,
        epoch: int | None = None,
        *,
        explain_model_errors: bool = False,
    ) -> dict[str, Any]:
        """Metrics on ``dataset``: all of it, or ``max_batches`` batches (a seeded draw per ``epoch``).

        ``explain_model_errors``: a model that cannot run on the input is a :class:`ConfigError`
        (:meth:`_model_runs_on`), as the check before a run needs it."""
        self.model.eval()
        evaluator = self.task.evaluator()
        batches = eval_batches(
            len(dataset), self.config.train.eval_batch_size, max_batches, self.config.seed, epoch
        )
        try:
            for batch in self._loader(dataset, batches):
                explained = (
                    self._model_runs_on(batch["image"]) if explain_model_errors else contextlib.nullcontext()
                )
                with self.precision.autocast(), second_order.kernels(False), explained:
                    output = self.model(batch["image"])
                evaluator.update(output, batch)
        finally:
            self.model.train()
        return evaluator.compute()

    @contextlib.contextmanager
    def _model_runs_on(self, image: torch.Tensor) -> Iterator[None]:
        """A model that cannot run on ``image`` (a backbone that downsamples it below what its layers
        need, a stride the decoder cannot undo) raises a :class:`ConfigError` naming the backbone,
        its settings and the input's shape, not a traceback from inside a layer."""
        from mtlbench.errors import ConfigError

        try:
            yield
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError) as exc:
            cfg = self.config
            given = {k: v for k, v in sorted(cfg.backbone_args.items()) if v is not None}
            settings = ", ".join(f"{k}={v}" for k, v in given.items()) or "its defaults"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"backbone {cfg.backbone!r} ({settings}) and the heads of task {cfg.task!r} cannot run "
                f"on an input of shape {tuple(image.shape)}: {reason}. Check backbone_args (its stages "
                "and strides against the image size) and the task's input size (data.*)"
            ) from exc

    def _improved(self, value: float) -> bool:
        best = self.state.best_value
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best if self.config.train.monitor_mode == "max" else value < best

    # ------------------------------------------------------------------ the loop
    def check_monitor(self) -> None:
        """Evaluate one validation batch and check that ``train.monitor`` is among its metrics, so a
        wrong name stops the run before its folder is written rather than after the first epoch. The
        random generators are left as they were (the run is bit-identical with or without the check)."""
        state = _rng_state()
        try:
            # a model that cannot run on the task's input is one clear line too
            val = self.evaluate(self.splits.val, max_batches=1, explain_model_errors=True)
        finally:
            _set_rng_state(state)
        monitor = self.config.train.monitor
        if monitor not in val:
            from mtlbench.errors import ConfigError

            raise ConfigError(
                f"train.monitor {monitor!r} is not a validation metric of task {self.config.task!r} "
                f"(available: {', '.join(scalars(val))})"
            )

    def fit(self, progress: Any = None, callbacks: tuple[Any, ...] = ()) -> TrainState:
        """Train from ``self.state.epoch`` to the configured number of epochs.

        Each callback's ``on_epoch_end(trainer, record)`` runs after the epoch's checkpoint is written
        (:class:`StopAfterEpochs` interrupts a run that way in tests).
        """
        tc = self.config.train
        n_train = len(self.splits.train)
        monitor = tc.monitor
        self.model.train()
        while self.state.epoch < tc.epochs:
            epoch = self.state.epoch
            t_epoch = time.perf_counter()
            sums: dict[str, float] = defaultdict(float)
            counts: dict[str, int] = defaultdict(int)
            batches = epoch_batches(n_train, tc.steps_per_epoch, tc.batch_size, self.config.seed, epoch)
            batches = distributed.shard_batches(batches)  # torchrun: this rank's share of each batch
            if hasattr(self.splits.train, "set_epoch"):  # fresh, reproducible augmentations per epoch
                self.splits.train.set_epoch(epoch)
            images = 0
            if progress is not None:
                progress.start_epoch(epoch + 1, tc.epochs, tc.steps_per_epoch)
            for batch in self._loader(self.splits.train, batches):
                t0 = time.perf_counter()
                self._diagnostics_time = 0.0
                logs = self.train_step(batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0 - self._diagnostics_time  # the method's cost only
                self.state.global_step += 1
                self.state.step_time_sum += dt
                self.state.step_count += 1
                images += len(batch["image"])
                if logs is None:
                    self.state.skipped_steps += 1
                    continue
                for k, v in logs.items():
                    sums[k] += v
                    counts[k] += 1
                if progress is not None:
                    progress.update(logs, images / max(time.perf_counter() - t_epoch, 1e-9))
            train_time = time.perf_counter() - t_epoch
            distributed.average_buffers_(self.model)  # torchrun: one model to validate and save
            sums = defaultdict(float, distributed.mean_over_ranks(sums))  # the logs of every rank
            self.method.on_epoch_end(
                epoch + 1, {k[len("loss/") :]: sums[k] / counts[k] for k in sums if k.startswith("loss/")}
            )
            val = self.evaluate(self.splits.val, tc.val_steps, epoch=epoch)
            if monitor not in val:
                raise KeyError(
                    f"train.monitor {monitor!r} is not a validation metric "
                    f"(available: {', '.join(scalars(val))})"
                )
            self.state.epoch = epoch + 1
            self.state.train_time_s += train_time
            value = float(val[monitor])
            improved = self._improved(value)
            if improved:
                self.state.best_value = value
                self.state.best_epoch = epoch + 1
            record = {
                "epoch": epoch + 1,
                "global_step": self.state.global_step,
                "train": {k: sums[k] / counts[k] for k in sums},
                "val": val,
                "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_train_time_s": train_time,
                "images_per_s": images / max(train_time, 1e-9),
                "skipped_steps": self.state.skipped_steps,
                "best": improved,
            }
            self.folder.log_metrics(record)
            self.scheduler.step()  # the next epoch's learning rate, saved with the checkpoint
            ckpt = self.checkpoint()
            if improved:
                self.folder.save_checkpoint("best", ckpt)
            self.folder.save_checkpoint("last", ckpt)
            if progress is not None:
                progress.end_epoch(record, monitor)
            for callback in callbacks:
                callback.on_epoch_end(self, record)
        return self.state
