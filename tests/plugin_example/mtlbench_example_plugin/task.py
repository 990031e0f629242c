"""A small three-task image task: segment a bright square, classify its brightness, regress its area.

Each 1×S×S image is Gaussian noise plus one square of side S/4…S/2 at a random place whose
brightness is one of ``levels`` values. Tasks: ``mask``, the square's mask (per-pixel, a decoder
head); ``level``, the brightness class; ``area``, the square's share of the image — the last two
from one shared MLP on the pooled bottleneck, as tasks that share a head. Generated in memory from
the seed in milliseconds, so the core's tests (trainer, resume, CLI, method contract) run on it
instead of a real task family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mtlbench.api import DataConfig, DataError, DataSplits, FeatureContract, ModelOutput, TaskDefinition
from mtlbench.heads import UNetDecoder


@dataclass(frozen=True)
class TwoShapesParams:
    levels: int = 3
    lambda_mask: float = 1.0
    lambda_level: float = 1.0
    lambda_area: float = 1.0

    def __post_init__(self) -> None:
        if self.levels < 2:
            raise ValueError(f"task_args.levels must be at least 2, got {self.levels}")
        for key in ("lambda_mask", "lambda_level", "lambda_area"):
            if getattr(self, key) < 0:
                raise ValueError(f"task_args.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class TwoShapesData(DataConfig):
    image_size: int = 32
    num_train: int = 32
    num_val: int = 16
    num_test: int = 16
    noise: float = 0.3


class ShapesDataset(Dataset):
    def __init__(self, images: np.ndarray, masks: np.ndarray, levels: np.ndarray) -> None:
        self.images, self.masks, self.levels = images, masks, levels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "image": torch.from_numpy(self.images[i]),
            "mask": torch.from_numpy(self.masks[i]),
            "label": torch.tensor(int(self.levels[i])),
            "area": torch.tensor(float(self.masks[i].mean())),
        }


def make_shapes(n: int, size: int, levels: int, noise: float, seed: int) -> ShapesDataset:
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, noise, (n, 1, size, size)).astype(np.float32)
    masks = np.zeros((n, 1, size, size), np.float32)
    level = rng.integers(0, levels, n)
    for i in range(n):
        side = int(rng.integers(size // 4, size // 2 + 1))
        top, left = rng.integers(0, size - side + 1, 2)
        masks[i, 0, top : top + side, left : left + side] = 1.0
        images[i, 0] += masks[i, 0] * (1.0 + level[i])
    return ShapesDataset(images, masks, level)


class ShapesEvaluator:
    def __init__(self) -> None:
        self.correct_pixels = self.pixels = self.correct = self.count = 0
        self.area_error = 0.0

    def update(self, output: ModelOutput, batch: dict[str, Tensor]) -> None:
        pred_mask = output.outputs["mask"].detach() > 0
        self.correct_pixels += int((pred_mask == (batch["mask"] > 0.5)).sum())
        self.pixels += batch["mask"].numel()
        pred = output.outputs["level"]["logits"].detach().argmax(1)
        self.correct += int((pred == batch["label"]).sum())
        self.count += len(pred)
        self.area_error += float((output.outputs["level"]["area"].detach() - batch["area"]).abs().sum())

    def compute(self) -> dict[str, Any]:
        pixel_accuracy = self.correct_pixels / max(self.pixels, 1)
        accuracy = self.correct / max(self.count, 1)
        score = (pixel_accuracy + accuracy) / 2
        area_mae = self.area_error / max(self.count, 1)
        return {"pixel_accuracy": pixel_accuracy, "accuracy": accuracy, "area_mae": area_mae, "score": score}


class LevelAndAreaHead(nn.Module):
    """One MLP on the pooled bottleneck for two tasks: brightness logits and the area."""

    def __init__(self, channels: int, levels: int, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.01))
        self.logits = nn.Linear(hidden, levels)
        self.area = nn.Linear(hidden, 1)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        h = self.hidden(features[-1].mean(dim=(2, 3)))
        return {"logits": self.logits(h), "area": self.area(h).squeeze(1)}


class MaskHead(nn.Module):
    def __init__(self, contract: FeatureContract) -> None:
        super().__init__()
        self.decoder = UNetDecoder(contract, out_channels=1)
        self.finest_stride = contract.strides()[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        # logits at the input's resolution, whatever the finest level's stride (timm's is 2)
        height, width = features[0].shape[-2:]
        return self.decoder(features, output_size=(height * self.finest_stride, width * self.finest_stride))


class TwoShapesTask(TaskDefinition):
    """Two shapes: segment a bright square and classify its brightness (a small plugin task)."""

    Params = TwoShapesParams
    Data = TwoShapesData
    presets: ClassVar = {
        "quick": {"train": {"epochs": 2, "steps_per_epoch": 4, "batch_size": 8, "lr": 1e-2}},
        "smoke": {"train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "eval_batch_size": 16}},
    }
    summary_metrics = (("pixel_accuracy", "Pixel acc."), ("accuracy", "Accuracy"))
    default_monitor = "score"
    segmentation_head = "mask"
    #: Its heads share one MLP, so a task is trained alone by zeroing the others' loss weights.
    single_task_baselines: ClassVar = {
        "mask": (("task_args.lambda_level=0.0", "task_args.lambda_area=0.0"), ("pixel_accuracy",)),
        "level": (("task_args.lambda_mask=0.0", "task_args.lambda_area=0.0"), ("accuracy",)),
        "area": (("task_args.lambda_mask=0.0", "task_args.lambda_level=0.0"), ("area_mae",)),
    }
    data_config: TwoShapesData

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The weights of the two auxiliary losses relative to the mask's (``mtlbench tune``)."""
        return {
            "lambda_level": trial.suggest_float("lambda_level", 0.1, 10.0, log=True),
            "lambda_area": trial.suggest_float("lambda_area", 0.1, 10.0, log=True),
        }

    @property
    def task_names(self) -> tuple[str, ...]:
        return ("mask", "level", "area")

    def input_size(self) -> tuple[int, int]:
        return (self.data_config.image_size, self.data_config.image_size)

    def check_data(self) -> None:
        d = self.data_config
        if d.root is not None:
            raise DataError(f"task twoshapes generates its data; data.root must be unset, got {d.root!r}")
        if d.image_size < 8:
            raise DataError(f"data.image_size must be at least 8, got {d.image_size}")
        for key in ("num_train", "num_val", "num_test"):
            if getattr(d, key) < 1:
                raise DataError(f"data.{key} must be at least 1, got {getattr(d, key)}")

    def prepare(self, progress: bool = True) -> DataSplits:
        d, p = self.data_config, self.params
        sizes = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
        made = {
            name: make_shapes(n, d.image_size, p.levels, d.noise, self.seed * 10 + k)
            for k, (name, n) in enumerate(sizes.items())
        }
        return DataSplits(made["train"], made["val"], made["test"], info={"sizes": sizes})

    def build_heads(self, contract: FeatureContract) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "mask": MaskHead(contract),
                "level": LevelAndAreaHead(contract.bottleneck.channels, self.params.levels),
            }
        )

    def compute_losses(self, output: ModelOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask_logits = output.outputs["mask"]
        per_sample = F.binary_cross_entropy_with_logits(mask_logits, batch["mask"], reduction="none").mean(
            dim=(1, 2, 3)
        )
        level = output.outputs["level"]
        return {
            "mask": per_sample.mean(),
            "level": F.cross_entropy(level["logits"], batch["label"]),
            "area": F.mse_loss(level["area"], batch["area"]),
        }

    def loss_weights(self) -> dict[str, float]:
        p = self.params
        return {"mask": p.lambda_mask, "level": p.lambda_level, "area": p.lambda_area}

    def evaluator(self) -> ShapesEvaluator:
        return ShapesEvaluator()
