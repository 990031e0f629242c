"""The interface a task family implements to plug into the common trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

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

    Params: ClassVar[type]
    #: (metric key, column header) for the end-of-run table, in order.
    summary_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Preferred validation metric for picking the best checkpoint, and its direction.
    default_monitor: ClassVar[str] = "score"

    def __init__(self, params: Any, data: DataConfig, seed: int, cache_dir: Path) -> None:
        self.params = params
        self.data_config = data
        self.seed = seed
        self.cache_dir = Path(cache_dir)

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
