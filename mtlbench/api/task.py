"""The interface a task family implements to plug into the common trainer.

A task owns everything that is specific to it: its data (the ``Data`` settings class, an extension
of the core :class:`~mtlbench.config.DataConfig`), its presets, its input channels and size, its
heads (built from the backbone's feature contract alone), its losses and metrics, the metric that
picks the best checkpoint, and the columns of the end-of-run table. The core reads these and
nothing else, so a new task family is one new folder under ``tasks/`` and no core edit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from torch import Tensor, nn
from torch.utils.data import Dataset

from mtlbench.backbones.contract import FeatureContract
from mtlbench.config import DataConfig
from mtlbench.errors import DataError
from mtlbench.model import ModelOutput

__all__ = ["DataError", "DataSplits", "Evaluator", "TaskDefinition"]


class Evaluator(Protocol):
    def update(self, output: ModelOutput, batch: dict[str, Tensor]) -> None: ...

    def compute(self) -> dict[str, Any]: ...


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset | None = None
    #: A second data set evaluated zero-shot (a different site or scanner), reported separately.
    external: Dataset | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def evaluation_splits(self) -> dict[str, Dataset]:
        """The splits reported at the end of a run, in order: val, test, external."""
        splits = {"val": self.val, "test": self.test, "external": self.external}
        return {name: ds for name, ds in splits.items() if ds is not None}


class TaskDefinition(ABC):
    """A task family: its data, its heads (built from the backbone's contract), losses and metrics."""

    #: The task's own settings (``task_args``): a frozen dataclass validated from the configuration.
    Params: ClassVar[type]
    #: The type of the ``data`` section for this task: :class:`DataConfig` or a subclass that adds
    #: the task's data options (sizes of an embedded data set, an external test set, ...).
    Data: ClassVar[type[DataConfig]] = DataConfig
    #: Named presets: partial configurations (any section) applied below the user's file and
    #: overrides. ``quick`` (the defaults) always exists; a task may redefine it. Every task
    #: declares ``smoke`` (tiny data, a step or two), on which the contract tests train every method
    #: and backbone.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: (metric key, column header) for the end-of-run table, in order.
    summary_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Validation metrics shown after every epoch (default: the first two summary metrics).
    progress_metrics: ClassVar[tuple[str, ...]] = ()
    #: The validation metric that picks the best checkpoint unless ``train.monitor`` says otherwise,
    #: and its direction. Every task must name one of the scalars its evaluator returns.
    default_monitor: ClassVar[str]
    default_monitor_mode: ClassVar[Literal["max", "min"]] = "max"
    #: The head whose decoder mirrors an nnU-Net decoder (``nnunet_checkpoint=`` loads it), if any.
    segmentation_head: ClassVar[str | None] = None
    #: How each task is trained alone for the single-task baselines of Δm% (``mtlbench grid
    #: --with-single-task``): name → (overrides, the metrics that baseline provides).
    single_task_baselines: ClassVar[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    #: Whether ``data.folds``/``data.fold`` (and so ``mtlbench cv``) are honoured; a task with fixed
    #: splits refuses them rather than train the same split k times.
    supports_folds: ClassVar[bool] = False

    def __init__(self, params: Any, data: DataConfig, seed: int, cache_dir: Path) -> None:
        self.params = params
        self.data_config = data
        self.seed = seed
        self.cache_dir = Path(cache_dir)

    def input_channels(self) -> int:
        """Channels of ``batch["image"]`` (the backbone is built for them)."""
        return 1

    def input_size(self) -> tuple[int, int] | None:
        """Height and width of ``batch["image"]`` when fixed (checked against the backbone's
        stride before anything runs); ``None`` when it varies."""
        return None

    @classmethod
    def smoke_fixture(cls, folder: Path) -> dict[str, Any]:
        """For a task without embedded data: write a tiny data set of the exact on-disk layout into
        ``folder`` and return the ``data`` settings that read it (used with the ``smoke`` preset
        by the contract tests). Tasks with embedded data return ``{}``."""
        return {}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Optuna suggestions for the task's own settings (``task_args``, e.g. loss weights) with
        ``trial.suggest_*`` and bare names; ``mtlbench tune`` adds them to the method's and trainer's."""
        return {}

    @classmethod
    def shown_metrics(cls) -> tuple[str, ...]:
        """The validation metrics to show after each epoch."""
        return cls.progress_metrics or tuple(key for key, _ in cls.summary_metrics[:2])

    @property
    @abstractmethod
    def task_names(self) -> tuple[str, ...]:
        """Names of the losses this task produces, e.g. ``("seg", "cls", "clin")``."""

    def check_data(self) -> None:  # noqa: B027  (optional hook)
        """Cheap validation of the data settings before anything is written (raise DataError)."""

    @abstractmethod
    def prepare(self, progress: bool = True) -> DataSplits:
        """Build or read the data sets (the expensive part: generation, caches, targets)."""

    @abstractmethod
    def build_heads(self, contract: FeatureContract) -> nn.ModuleDict:
        """Task heads built from the backbone's feature contract alone."""

    @abstractmethod
    def compute_losses(self, output: ModelOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Un-weighted per-task losses (batch means that do not mix samples)."""

    @abstractmethod
    def loss_weights(self) -> dict[str, float]:
        """λ_t for each task loss."""

    @abstractmethod
    def evaluator(self) -> Evaluator:
        """A fresh metric accumulator for one evaluation pass."""
