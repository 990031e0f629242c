"""The multidigits task: MultiMNIST (Sener & Koltun 2018) on real digits, plus a pixel ownership map."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mtlbench.api.task import DataError, DataSplits, TaskDefinition
from mtlbench.backbones.contract import FeatureContract
from mtlbench.model import ModelOutput
from mtlbench.registry import register_task

from .composites import Composites, cached_composites
from .evaluator import MultiDigitsEvaluator
from .heads import DigitClassifier, OwnershipHead
from .settings import DATA_FORMATS, PRESETS, MultiDigitsData

TASKS = ("left", "right", "map")


@dataclass(frozen=True)
class MultiDigitsParams:
    """Multidigits task settings: which tasks to train, their loss weights, the classifier heads."""

    #: Which heads to train: all three (multitask), or a subset for single-task baselines.
    tasks: tuple[str, ...] = TASKS
    lambda_left: float = 1.0
    lambda_right: float = 1.0
    lambda_map: float = 1.0
    #: Hidden units of each digit classifier's MLP.
    classifier_hidden: int = 128
    #: The digit classifiers average-pool the bottleneck to ``pool_grid`` × ``pool_grid``.
    pool_grid: int = 2

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(
                f"task_args.tasks must be a non-empty subset of {list(TASKS)} without repeats, "
                f"got {list(self.tasks)}"
            )
        for key in ("lambda_left", "lambda_right", "lambda_map"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"task_args.{key} must be a finite number >= 0, got {value}")
        for key in ("classifier_hidden", "pool_grid"):
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"task_args.{key} must be at least 1, got {value}")


class CompositeDataset(Dataset):
    """Items ``{"image": (1, S, S) float32, "left": int64, "right": int64, "map": (S, S) int64}``."""

    def __init__(self, composites: Composites) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(composites.images, dtype=np.float32))
        self.maps = torch.from_numpy(np.ascontiguousarray(composites.maps))
        self.left = torch.from_numpy(np.asarray(composites.left, dtype=np.int64))
        self.right = torch.from_numpy(np.asarray(composites.right, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "image": self.images[index].unsqueeze(0),
            "left": self.left[index],
            "right": self.right[index],
            "map": self.maps[index].long(),
        }


@register_task("multidigits")
class MultiDigitsTask(TaskDefinition):
    """MultiMNIST on scikit-learn's real digits: left and right digit classes and a pixel ownership map."""

    Params = MultiDigitsParams
    Data = MultiDigitsData
    presets = PRESETS
    summary_metrics = (
        ("left_accuracy", "Left acc"),
        ("right_accuracy", "Right acc"),
        ("map_miou", "Map mIoU"),
        ("map_pixel_accuracy", "Pixel acc"),
        ("score", "Score"),
    )
    progress_metrics = ("left_accuracy", "right_accuracy", "map_miou")
    #: Mean of the two digit accuracies and the map's mIoU (over the trained tasks) on validation.
    default_monitor = "score"
    segmentation_head = "map"
    #: ``data.folds = k``: the training and validation source digits are cut into k stratified folds.
    supports_folds = True
    data_config: MultiDigitsData

    def input_channels(self) -> int:
        return 1

    def input_size(self) -> tuple[int, int]:
        # 32 px by default: a multiple of unet_small's deepest stride (16) and of resnet18's (32).
        return (self.data_config.canvas_size, self.data_config.canvas_size)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if t in self.params.tasks)

    def loss_weights(self) -> dict[str, float]:
        p = self.params
        weights = {"left": p.lambda_left, "right": p.lambda_right, "map": p.lambda_map}
        return {name: weights[name] for name in self.task_names}

    # ------------------------------------------------------------------ data
    def check_data(self) -> None:
        d = self.data_config
        if d.format not in DATA_FORMATS:
            raise DataError(
                f"unknown data.format {d.format!r} for task multidigits "
                f"(available: {', '.join(DATA_FORMATS)})"
            )
        if d.format == "digits" and d.root is not None:
            raise DataError(
                f"data.root is set to {d.root!r} but data.format is 'digits' (scikit-learn's digits need "
                "no root); set data.format=mnist for the MNIST idx files, or drop data.root"
            )
        if d.format == "mnist":
            if d.root is None:
                raise DataError(
                    "data.format is 'mnist' but data.root is not set (the folder of the four idx files)"
                )
            if not Path(d.root).is_dir():
                raise DataError(f"data.root {d.root!r} is not a folder")
            from .idx import mnist_files

            mnist_files(Path(d.root))
        if d.reader_options:
            raise DataError(f"data.reader_options: multidigits takes none, got {sorted(d.reader_options)}")
        if d.augment:
            raise DataError(
                "data.augment=true is not supported by multidigits (a flip would swap the digits' roles)"
            )
        self._check_geometry(d)
        self._check_sizes(d)

    @staticmethod
    def _check_geometry(d: MultiDigitsData) -> None:
        if d.digit_size < 4:
            raise DataError(f"data.digit_size must be at least 4, got {d.digit_size}")
        if d.max_offset < 0:
            raise DataError(f"data.max_offset must be >= 0, got {d.max_offset}")
        if d.canvas_size < d.digit_size + d.max_offset:
            raise DataError(
                f"data.canvas_size {d.canvas_size} is smaller than data.digit_size + data.max_offset "
                f"({d.digit_size} + {d.max_offset})"
            )
        if not 0.0 < d.ink_threshold <= 1.0:
            raise DataError(f"data.ink_threshold must be in (0, 1], got {d.ink_threshold}")

    @staticmethod
    def _check_sizes(d: MultiDigitsData) -> None:
        for key in ("num_train", "num_val"):
            if getattr(d, key) < 1:
                raise DataError(f"data.{key} must be at least 1, got {getattr(d, key)}")
        if d.num_test < 0:
            raise DataError(f"data.num_test must be >= 0, got {d.num_test}")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(d, key) < 1.0:
                raise DataError(f"data.{key} must be in (0, 1), got {getattr(d, key)}")
        if d.val_fraction + d.test_fraction >= 1.0:
            raise DataError(
                "data.val_fraction + data.test_fraction must be below 1, "
                f"got {d.val_fraction} + {d.test_fraction}"
            )
        if d.folds is not None and (d.folds < 2 or not 0 <= d.fold < d.folds):
            raise DataError(
                f"data.folds must be >= 2 and 0 <= data.fold < data.folds, got folds={d.folds}, fold={d.fold}"
            )

    def prepare(self, progress: bool = True) -> DataSplits:
        composites, info = cached_composites(self.data_config, self.cache_dir)
        test = composites["test"]
        return DataSplits(
            train=CompositeDataset(composites["train"]),
            val=CompositeDataset(composites["val"]),
            test=CompositeDataset(test) if len(test) else None,
            info=info,
        )

    # ------------------------------------------------------------------ model
    def build_heads(self, contract: FeatureContract) -> nn.ModuleDict:
        p = self.params
        heads = nn.ModuleDict()
        for name in ("left", "right"):
            if name in p.tasks:
                heads[name] = DigitClassifier(contract, grid=p.pool_grid, hidden=p.classifier_hidden)
        if "map" in p.tasks:
            heads["map"] = OwnershipHead(contract)
        return heads

    def compute_losses(self, output: ModelOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # Cross-entropy means; the map's is over B × H × W pixels, every image having the same
        # number, so it is the mean of per-sample means and samples do not mix.
        return {name: F.cross_entropy(output.outputs[name].float(), batch[name]) for name in self.task_names}

    def evaluator(self) -> MultiDigitsEvaluator:
        return MultiDigitsEvaluator(self.task_names)
