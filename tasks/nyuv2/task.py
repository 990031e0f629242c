"""NYUv2 (13-class segmentation, depth, surface normals) and Cityscapes (7-class segmentation, depth),
preprocessed as MTAN, LibMTL, CAGrad, Nash-MTL and FAMO use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from mtlbench.api.task import DataError, DataSplits, TaskDefinition
from mtlbench.backbones.contract import FeatureContract
from mtlbench.model import ModelOutput
from mtlbench.registry import register_task

from .dataset import DenseSceneDataset
from .heads import ASPPHead, SegNetHead, UNetHead
from .layout import BENCHMARKS, FOLDERS, SPLITS, count_samples, write_fixture
from .metrics import METRICS, DenseEvaluator, depth_loss, normal_loss, segmentation_loss
from .mtan import mtan_heads
from .settings import CityscapesParams, DenseData, DenseParams, NYUv2Params, presets

#: ``split_id`` of the samples: the held-out part of ``train``, and the official ``val`` folder.
HELD_OUT, OFFICIAL = 0, 1


class DenseSceneTask(TaskDefinition):
    """Shared by NYUv2 and Cityscapes; ``benchmark`` names the entry of :data:`BENCHMARKS`."""

    benchmark: str
    Data = DenseData
    default_monitor = "loss"
    default_monitor_mode = "min"
    segmentation_head = "seg"
    params: DenseParams
    data_config: DenseData

    def __init__(self, params: DenseParams, data: DenseData, seed: int, cache_dir: Path) -> None:
        super().__init__(params, data, seed, cache_dir)
        self.spec = BENCHMARKS[self.benchmark]
        self.baselines: dict[int, dict[str, float]] = {}

    @classmethod
    def smoke_fixture(cls, folder: Path) -> dict[str, Any]:
        write_fixture(folder, cls.benchmark, {"train": 4, "val": 3})
        return {"root": str(folder)}

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t for t in self.spec.tasks if t in self.params.tasks)

    def loss_weights(self) -> dict[str, float]:
        return {t: float(getattr(self.params, f"lambda_{t}")) for t in self.task_names}

    def input_channels(self) -> int:
        return 3

    def input_size(self) -> tuple[int, int]:
        """The size of the first training image (the preprocessed sets have one size throughout)."""
        root = self.data_config.root
        first = Path(root) / "train" / "image" / "0.npy" if root else None
        if first is None or not first.is_file():
            return self.spec.size
        shape = np.load(first, mmap_mode="r").shape
        return (int(shape[0]), int(shape[1]))

    # ------------------------------------------------------------------ data
    def check_data(self) -> None:
        d = self.data_config
        name = self.benchmark
        if d.root is None:
            raise DataError(
                f"task {name} needs data.root: the preprocessed data set (see `mtlbench data check "
                f"--format {name}` and the README for where to get it); it is not shipped"
            )
        if not Path(d.root).is_dir():
            raise DataError(f"data.root {d.root!r} does not exist")
        if d.format not in (None, name):
            raise DataError(f"data.format for task {name} is {name!r} (or unset), got {d.format!r}")
        for split in SPLITS:
            for folder in ("image", *(FOLDERS[t] for t in self.task_names)):
                path = Path(d.root) / split / folder
                if not path.is_dir():
                    raise DataError(
                        f"data.root: {path} is missing (run `mtlbench data check {d.root} --format {name}`)"
                    )
            if count_samples(Path(d.root), split) == 0:
                raise DataError(f"data.root: no .npy files in {Path(d.root) / split / 'image'}")
        if not 0.0 <= d.val_from_train < 1.0:
            raise DataError(f"data.val_from_train must be in [0, 1), got {d.val_from_train}")
        if d.val_from_train > 0 and self._held_out_count() == 0:
            raise DataError(f"data.val_from_train={d.val_from_train} holds out no training sample")
        self.baselines = self._read_baselines()

    def _held_out_count(self) -> int:
        n = count_samples(Path(self.data_config.root), "train")  # type: ignore[arg-type]
        return min(n - 1, round(self.data_config.val_from_train * n))

    def prepare(self, progress: bool = True) -> DataSplits:
        d = self.data_config
        root = Path(d.root)  # type: ignore[arg-type]
        n_train = count_samples(root, "train")
        official = np.arange(count_samples(root, "val"))

        def split(folder: str, indices: np.ndarray, split_id: int, augment: bool) -> DenseSceneDataset:
            return DenseSceneDataset(
                root, folder, indices, self.task_names, self.spec.num_classes, split_id, augment, self.seed
            )

        official_set = split("val", official, OFFICIAL, False)
        if d.val_from_train > 0:
            order = np.random.default_rng(d.split_seed).permutation(n_train)
            held_out = np.sort(order[: self._held_out_count()])
            kept = np.sort(order[self._held_out_count() :])
            train, val, test = (
                split("train", kept, HELD_OUT, d.augment),
                split("train", held_out, HELD_OUT, False),
                official_set,
            )
            protocol = "model selection on a held-out part of train; the official val folder reported as test"
        else:
            train, val, test = split("train", np.arange(n_train), HELD_OUT, d.augment), official_set, None
            protocol = (
                "the papers' protocol: the official val folder (their test split) is also used for selection"
            )
        return DataSplits(
            train=train,
            val=val,
            test=test,
            info={
                "benchmark": self.benchmark,
                "protocol": protocol,
                "num_train": len(train),
                "num_val": len(val),
                "num_test": 0 if test is None else len(test),
                "held_out_train_indices": [] if test is None else val.indices.tolist(),
            },
        )

    def _read_baselines(self) -> dict[int, dict[str, float]]:
        """{split_id: metric → value} from the single-task runs in ``task_args.baselines``."""
        if not self.params.baselines:
            return {}
        covered: dict[str, str] = {}
        by_split: dict[int, dict[str, float]] = {}
        for entry in self.params.baselines:
            path = Path(entry)
            path = path / "result.json" if path.is_dir() else path
            if not path.is_file():
                raise DataError(
                    f"task_args.baselines: {entry} is neither a result.json nor a finished run folder"
                )
            result = json.loads(path.read_text())
            config = result.get("config", {})
            if config.get("task") != self.benchmark:
                raise DataError(
                    f"task_args.baselines: {path} is a run of task {config.get('task')!r}, "
                    f"not {self.benchmark!r}"
                )
            tasks = config.get("task_args", {}).get("tasks") or list(self.spec.tasks)
            for task in tasks:
                if task in covered:
                    raise DataError(
                        f"task_args.baselines: task {task!r} is in both {covered[task]} and {path}"
                    )
                covered[task] = str(path)
            for split_id, values in self._baseline_splits(result).items():
                for task in tasks:
                    for key, _ in METRICS[task]:
                        if key in values:
                            by_split.setdefault(split_id, {})[key] = float(values[key])
        missing = [t for t in self.task_names if t not in covered]
        if missing:
            raise DataError(f"task_args.baselines cover no single-task run of {missing}")
        return by_split

    def _baseline_splits(self, result: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """A baseline's metrics by the data they were measured on; its held-out part counts only
        when it was drawn as this run's (same fraction and seed)."""
        data = result["config"].get("data", {})
        metrics = result.get("metrics", {})
        if float(data.get("val_from_train", 0.0)) == 0.0:
            return {OFFICIAL: metrics["val"]} if "val" in metrics else {}
        out = {OFFICIAL: metrics["test"]} if "test" in metrics else {}
        same_draw = (
            float(data["val_from_train"]) == self.data_config.val_from_train
            and int(data.get("split_seed", 0)) == self.data_config.split_seed
        )
        if same_draw and "val" in metrics:
            out[HELD_OUT] = metrics["val"]
        return out

    # ------------------------------------------------------------------ model
    def build_heads(self, contract: FeatureContract) -> nn.ModuleDict:
        p = self.params
        channels = {"seg": self.spec.num_classes, "depth": 1, "normal": 3}
        if p.head == "mtan":
            return mtan_heads(contract, {task: channels[task] for task in self.task_names})
        heads = nn.ModuleDict()
        for task in self.task_names:
            if p.head == "aspp":
                heads[task] = ASPPHead(contract, channels[task], width=p.head_width, norm=p.head_norm)
            elif p.head == "segnet":
                heads[task] = SegNetHead(contract, channels[task])
            else:
                heads[task] = UNetHead(contract, channels[task], max_width=p.head_width)
        return heads

    def compute_losses(self, output: ModelOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        losses = {}
        outputs = output.outputs
        if "seg" in self.task_names:
            losses["seg"] = segmentation_loss(outputs["seg"], batch["seg"])
        if "depth" in self.task_names:
            losses["depth"] = depth_loss(outputs["depth"], batch["depth"])
        if "normal" in self.task_names:
            losses["normal"] = normal_loss(outputs["normal"], batch["normal"])
        return losses

    def evaluator(self) -> DenseEvaluator:
        return DenseEvaluator(self.task_names, self.spec.num_classes, self.baselines)


@register_task("nyuv2")
class NYUv2Task(DenseSceneTask):
    """NYUv2 (MTAN preprocessing): 13-class segmentation, depth and surface normals at 288×384."""

    benchmark = "nyuv2"
    Params = NYUv2Params
    presets = presets("nyuv2")
    summary_metrics = (
        ("miou", "mIoU"),
        ("pixel_acc", "Pix acc"),
        ("abs_err", "Abs err"),
        ("rel_err", "Rel err"),
        ("angle_mean", "Mean°"),
        ("angle_median", "Median°"),
        ("within_11_25", "<11.25°"),
        ("within_22_5", "<22.5°"),
        ("within_30", "<30°"),
    )
    progress_metrics = ("miou", "abs_err", "angle_mean")


@register_task("cityscapes")
class CityscapesTask(DenseSceneTask):
    """Cityscapes (MTAN preprocessing): 7-class segmentation and depth at 128×256."""

    benchmark = "cityscapes"
    Params = CityscapesParams
    presets = presets("cityscapes")
    summary_metrics = (
        ("miou", "mIoU"),
        ("pixel_acc", "Pix acc"),
        ("abs_err", "Abs err"),
        ("rel_err", "Rel err"),
    )
    progress_metrics = ("miou", "abs_err")
