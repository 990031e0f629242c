"""The thyroid ultrasound task (Salama et al.): segmentation, TI-RADS grading, clinical guidance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.backbones.contract import FeatureContract
from mtlbench.config import DataConfig
from mtlbench.losses import balanced_class_weights, masked_mse, soft_dice_loss
from mtlbench.metrics import ClassificationMeter, RegressionMeter, SegmentationMeter
from mtlbench.model import ModelOutput
from mtlbench.registry import register_task
from mtlbench.tasks.base import DataError, DataSplits, TaskDefinition

from .annotators import AnnotatorConfig, apply_annotators
from .dataset import ThyroidArrays, radiomics_statistics, standardise
from .heads import ClinicallyGuidedClassifier, SegmentationHead
from .radiomics import FEATURE_NAMES

CLASS_NAMES = ("TR1", "TR2", "TR3", "TR4", "TR5")
DATA_FORMATS = ("phantom",)


@dataclass(frozen=True)
class ThyroidParams:
    """Thyroid task settings (the λ_t of Eq. 7 and the classifier embedding of Eq. 1–2)."""

    embedding_dim: int = 64
    clinical_guidance: bool = True
    lambda_seg: float = 1.0
    lambda_cls: float = 1.0
    lambda_clin: float = 1.0
    class_weighting: bool = True
    classifier_hidden: int = 128
    dropout: float = 0.0
    #: Simulated annotator variability on the phantom's training and validation labels (the paper's
    #: premise); ``None`` keeps the true contours and grades. The test split always keeps the truth.
    annotators: AnnotatorConfig | None = None

    def __post_init__(self) -> None:
        for key in ("lambda_seg", "lambda_cls", "lambda_clin", "dropout"):
            value = getattr(self, key)
            if value < 0:
                raise ValueError(f"task_args.{key} must be >= 0, got {value}")
        if self.embedding_dim <= len(FEATURE_NAMES):
            raise ValueError(
                f"task_args.embedding_dim must exceed the {len(FEATURE_NAMES)} clinical features, "
                f"got {self.embedding_dim}"
            )


class ThyroidEvaluator:
    """Dice/IoU/HD95, macro precision/recall/F1 with per-class scores and confusion, clinical error."""

    def __init__(self) -> None:
        self.seg = SegmentationMeter()
        self.cls = ClassificationMeter(num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES)
        self.clin = RegressionMeter(feature_names=FEATURE_NAMES)
        self.has_clinical = False

    def update(self, output: ModelOutput, batch: dict[str, Tensor]) -> None:
        seg = output.outputs["seg"]
        pred_mask = (seg.detach().float() > 0).squeeze(1).cpu().numpy()
        self.seg.update(pred_mask, batch["mask"].squeeze(1).cpu().numpy() > 0.5)
        cls = output.outputs["cls"]
        self.cls.update(batch["label"].cpu().numpy(), cls["logits"].detach().float().argmax(1).cpu().numpy())
        if "clinical" in batch:
            self.has_clinical = True
            self.clin.update(cls["h_tirads"].detach().float().cpu().numpy(), batch["clinical"].cpu().numpy())

    def compute(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        metrics.update(self.seg.compute())
        metrics.update(self.cls.compute())
        if self.has_clinical:
            clin = self.clin.compute()
            metrics["clinical_mse"] = clin["mse"]
            metrics["clinical_mae"] = clin["mae"]
            metrics["clinical_per_feature"] = clin["per_feature"]
        metrics["score"] = 0.5 * (metrics["dice"] + metrics["f1"])
        return metrics


@register_task("thyroid")
class ThyroidTask(TaskDefinition):
    """Thyroid ultrasound: nodule segmentation, TI-RADS grading, clinically guided radiomics slice."""

    Params = ThyroidParams
    summary_metrics = (
        ("dice", "Dice"),
        ("iou", "IoU"),
        ("hd95", "HD95"),
        ("precision", "Precision"),
        ("recall", "Recall"),
        ("f1", "F1"),
    )
    default_monitor = "score"

    def __init__(self, params: ThyroidParams, data: DataConfig, seed: int, cache_dir: Path) -> None:
        super().__init__(params, data, seed, cache_dir)
        self.class_weights: Tensor | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        return ("seg", "cls", "clin") if self.params.clinical_guidance else ("seg", "cls")

    def loss_weights(self) -> dict[str, float]:
        p = self.params
        weights = {"seg": p.lambda_seg, "cls": p.lambda_cls, "clin": p.lambda_clin}
        return {k: weights[k] for k in self.task_names}

    # ------------------------------------------------------------------ data
    def check_data(self) -> None:
        d = self.data_config
        if d.format not in DATA_FORMATS:
            raise DataError(
                f"unknown data.format {d.format!r} for task thyroid (available: {', '.join(DATA_FORMATS)})"
            )
        if d.root is not None:
            if not Path(d.root).exists():
                raise DataError(f"data.root {d.root!r} does not exist")
            if d.format == "phantom":
                raise DataError(
                    f"data.root is set to {d.root!r} but data.format is 'phantom' "
                    "(the synthetic phantom needs no "
                    "root); set data.format to the layout of the data set, or drop data.root"
                )
        if d.image_size < 16:
            raise DataError(f"data.image_size must be at least 16, got {d.image_size}")
        for key in ("num_train", "num_val"):
            if getattr(d, key) < 1:
                raise DataError(f"data.{key} must be at least 1, got {getattr(d, key)}")

    def prepare(self, progress: bool = True) -> DataSplits:
        from .phantom import PhantomConfig, generate_phantom
        from .radiomics_cache import cached_features

        d = self.data_config
        n_train, n_val, n_test = d.num_train, d.num_val, d.num_test
        phantom = generate_phantom(
            n_train + n_val + n_test, PhantomConfig(size=d.image_size, seed=d.phantom_seed)
        )
        images, masks, levels = phantom.images, phantom.masks, phantom.levels
        info: dict[str, Any] = {"source": "phantom"}
        if self.params.annotators is not None:
            labelled = slice(0, n_train + n_val)  # readers label training and validation data only
            noisy = apply_annotators(masks[labelled], levels[labelled], self.params.annotators)
            masks = np.concatenate([noisy.masks, masks[n_train + n_val :]])
            levels = np.concatenate([noisy.levels, levels[n_train + n_val :]])
            info["annotators"] = {
                "reader_styles": noisy.reader_styles,
                "reader_per_sample": noisy.reader.tolist(),
                "grade_changed_fraction": float(noisy.flipped.mean()),
                "contour_fallbacks": int(noisy.fallback.sum()),
            }
        labels = levels.astype(np.int64) - 1
        # Radiomics targets come from the image and the (possibly reader-drawn) training mask.
        features = cached_features(
            images, masks, self.cache_dir, workers=d.radiomics_workers, progress=progress
        )
        train = slice(0, n_train)
        mean, std = radiomics_statistics(features[train])
        clinical = standardise(features, mean, std)
        self.class_weights = (
            torch.tensor(balanced_class_weights(labels[train], len(CLASS_NAMES)), dtype=torch.float32)
            if self.params.class_weighting
            else None
        )

        def split(sl: slice) -> ThyroidArrays:
            return ThyroidArrays(images[sl], masks[sl], labels[sl], clinical[sl])

        test = split(slice(n_train + n_val, None)) if n_test > 0 else None
        counts = {name: int((labels[train] == i).sum()) for i, name in enumerate(CLASS_NAMES)}
        return DataSplits(
            train=split(train),
            val=split(slice(n_train, n_train + n_val)),
            test=test,
            info={
                **info,
                "train_class_counts": counts,
                "radiomics_mean": mean.tolist(),
                "radiomics_std": std.tolist(),
            },
        )

    # ------------------------------------------------------------------ model
    def build_heads(self, contract: FeatureContract) -> nn.ModuleDict:
        p = self.params
        return nn.ModuleDict(
            {
                "seg": SegmentationHead(contract),
                "cls": ClinicallyGuidedClassifier(
                    contract,
                    num_classes=len(CLASS_NAMES),
                    embedding_dim=p.embedding_dim,
                    n_clinical=len(FEATURE_NAMES),
                    hidden=p.classifier_hidden,
                    dropout=p.dropout,
                ),
            }
        )

    def compute_losses(self, output: ModelOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        seg_logits = output.outputs["seg"]
        cls = output.outputs["cls"]
        losses = {"seg": soft_dice_loss(seg_logits, batch["mask"])}
        weight = None if self.class_weights is None else self.class_weights.to(cls["logits"].device)
        losses["cls"] = F.cross_entropy(cls["logits"].float(), batch["label"], weight=weight)
        if self.params.clinical_guidance:
            losses["clin"] = masked_mse(cls["h_tirads"], batch["clinical"])
        return losses

    def evaluator(self) -> ThyroidEvaluator:
        return ThyroidEvaluator()
