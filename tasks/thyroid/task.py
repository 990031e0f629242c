"""The thyroid ultrasound task (Salama et al.): segmentation, TI-RADS grading, clinical guidance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mtlbench.api.task import DataError, DataSplits, TaskDefinition
from mtlbench.backbones.contract import FeatureContract
from mtlbench.losses import balanced_class_weights, masked_mse, soft_dice_loss, weighted_cross_entropy
from mtlbench.model import ModelOutput
from mtlbench.registry import register_task

from .annotators import AnnotatorConfig
from .augment import AugmentConfig, training_augmentation
from .dataset import ThyroidArrays, radiomics_statistics, standardise
from .evaluator import CLASS_NAMES, ThyroidEvaluator
from .heads import SEG_DECODERS, ClinicallyGuidedClassifier, SegDecoder, SegmentationHead
from .radiomics import FEATURE_NAMES
from .settings import DATA_FORMATS, PRESETS, ThyroidData

TASKS = ("seg", "cls")


@dataclass(frozen=True)
class ThyroidParams:
    """Thyroid task settings (the λ_t of Eq. 7 and the classifier embedding of Eq. 1–2)."""

    #: Which heads to train: both (multitask), or one for the single-task baselines of Table 1.
    tasks: tuple[str, ...] = TASKS
    embedding_dim: int = 64
    #: The clinically guided slice (L_clin, Eq. 3), on whenever the classifier is trained.
    clinical_guidance: bool = True
    lambda_seg: float = 1.0
    lambda_cls: float = 1.0
    lambda_clin: float = 1.0
    #: L_clin per sample: ``sum`` = ‖h_tirads − r‖², the squared L2 norm of Eq. 3 (the ``paper`` preset),
    #: or ``mean`` over the 13 features (= the sum / 13: λ_clin divided by 13). ``mean`` stays the
    #: default of the other presets: with ``sum`` the quick preset's validation F1 fell from 0.450 to 0.394.
    clin_reduction: Literal["sum", "mean"] = "mean"
    #: The segmentation decoder: ``bilinear`` upsampling (no parameters), or ``nnunet``, nnU-Net v2's
    #: decoder (transposed convolutions; a pretrained nnU-Net checkpoint then loads into all of it).
    seg_decoder: SegDecoder = "bilinear"
    class_weighting: bool = True
    classifier_hidden: int = 128
    dropout: float = 0.0
    #: Simulated annotator variability on the phantom's training and validation labels (the paper's
    #: premise); ``None`` keeps the true contours and grades. The test split always keeps the truth.
    annotators: AnnotatorConfig | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(
                f"task_args.tasks must be a non-empty subset of {list(TASKS)}, got {list(self.tasks)}"
            )
        if self.seg_decoder not in SEG_DECODERS:
            raise ValueError(
                f"task_args.seg_decoder must be one of {list(SEG_DECODERS)}, got {self.seg_decoder!r}"
            )
        for key in ("lambda_seg", "lambda_cls", "lambda_clin", "dropout"):
            value = getattr(self, key)
            if value < 0:
                raise ValueError(f"task_args.{key} must be >= 0, got {value}")
        if self.embedding_dim <= len(FEATURE_NAMES):
            raise ValueError(
                f"task_args.embedding_dim must exceed the {len(FEATURE_NAMES)} clinical features, "
                f"got {self.embedding_dim}"
            )


@register_task("thyroid")
class ThyroidTask(TaskDefinition):
    """Thyroid ultrasound: nodule segmentation, TI-RADS grading, clinically guided radiomics slice."""

    Params = ThyroidParams
    Data = ThyroidData
    presets = PRESETS
    summary_metrics = (
        ("dice", "Dice"),
        ("iou", "IoU"),
        ("hd95", "HD95"),
        ("hd95_nonempty", "HD95 non-empty"),
        ("empty_predictions", "Empty"),
        ("precision", "Precision"),
        ("recall", "Recall"),
        ("f1", "F1"),
    )
    progress_metrics = ("dice", "f1")
    #: (Dice + F1) / 2 on the validation split: both tasks count for the best checkpoint.
    default_monitor = "score"
    segmentation_head = "seg"
    #: The paper's single-task baselines (Table 1): one head, and no clinical guidance for cls.
    single_task_baselines: ClassVar = {
        "seg": (("task_args.tasks=[seg]",), ("dice", "iou", "hd95")),
        "cls": (
            ("task_args.tasks=[cls]", "task_args.clinical_guidance=false"),
            ("precision", "recall", "f1", "accuracy"),
        ),
    }
    supports_folds = True
    data_config: ThyroidData

    def __init__(self, params: ThyroidParams, data: ThyroidData, seed: int, cache_dir: Path) -> None:
        super().__init__(params, data, seed, cache_dir)
        self.class_weights: Tensor | None = None

    def input_size(self) -> tuple[int, int]:
        return (self.data_config.image_size, self.data_config.image_size)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Classification and clinical-slice loss weights relative to segmentation's (``mtlbench tune``)."""
        return {
            "lambda_cls": trial.suggest_float("lambda_cls", 0.1, 10.0, log=True),
            "lambda_clin": trial.suggest_float("lambda_clin", 0.1, 10.0, log=True),
        }

    @property
    def task_names(self) -> tuple[str, ...]:
        names = tuple(t for t in TASKS if t in self.params.tasks)
        if "cls" in names and self.params.clinical_guidance:
            names += ("clin",)
        return names

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
        if d.format != "phantom" and d.root is None:
            raise DataError(f"data.format is {d.format!r} but data.root is not set")
        if d.external_root is not None:
            if not Path(d.external_root).exists():
                raise DataError(f"data.external_root {d.external_root!r} does not exist")
            if d.external_format not in DATA_FORMATS[1:]:
                raise DataError(
                    f"data.external_format {d.external_format!r} is not a data-set format "
                    f"(available: {', '.join(DATA_FORMATS[1:])})"
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
        for key in ("num_test", "num_external"):
            if getattr(d, key) < 0:
                raise DataError(f"data.{key} must be at least 0, got {getattr(d, key)}")
        self._check_readers()

    def _check_readers(self) -> None:
        """Reader options typed and known, folds in range, and each data set's layout as its format
        says (opening a reader reads no sample), before anything is written."""
        from .readers import open_reader, typed_reader_options
        from .real_data import DEFAULT_FOLDS

        d = self.data_config
        if d.format == "phantom":
            if d.reader_options:
                raise DataError("data.reader_options apply to a data set at data.root; the phantom has none")
        else:
            k = d.folds or DEFAULT_FOLDS
            if not 0 <= d.fold < k:
                raise DataError(f"data.fold must be in 0..{k - 1} for {k} folds, got {d.fold}")
            typed_reader_options(d.format, d.reader_options, "data.reader_options")
            open_reader(d.root, d.format, **d.reader_options)
        if d.external_root is not None:
            typed_reader_options(d.external_format, d.external_options, "data.external_options")
            open_reader(d.external_root, d.external_format, **d.external_options)

    def prepare(self, progress: bool = True) -> DataSplits:
        if self.data_config.format != "phantom":
            return self._prepare_real(progress)
        from .phantom_data import phantom_arrays
        from .radiomics_cache import cached_features

        d = self.data_config
        data = phantom_arrays(d, self.params.annotators, self.cache_dir)
        # Radiomics targets from the image and the (possibly reader-drawn) mask; statistics from the
        # training split only. Test and external samples get no target: never used at inference.
        labelled = np.concatenate([data.train_idx, data.val_idx])
        features = np.full((len(data.images), len(FEATURE_NAMES)), np.nan)
        features[labelled] = cached_features(
            data.images[labelled],
            data.masks[labelled],
            self.cache_dir,
            workers=d.radiomics_workers,
            progress=progress,
        )
        mean, std = radiomics_statistics(features[data.train_idx])
        clinical = standardise(features, mean, std)
        train_labels = data.labels[data.train_idx]
        self.class_weights = (
            torch.tensor(balanced_class_weights(train_labels, len(CLASS_NAMES)), dtype=torch.float32)
            if self.params.class_weighting
            else None
        )

        def subset(idx: np.ndarray, augment: AugmentConfig | None = None) -> ThyroidArrays:
            return ThyroidArrays(
                data.images[idx], data.masks[idx], data.labels[idx], clinical[idx], augment, self.seed
            )

        augment = training_augmentation(d.augment, "clin" in self.task_names)

        external = None
        if data.external is not None:
            ext_images, ext_masks, ext_labels = data.external
            no_target = np.full((len(ext_images), len(FEATURE_NAMES)), np.nan, dtype=np.float32)
            external = ThyroidArrays(ext_images, ext_masks, ext_labels, no_target)
        counts = {name: int((train_labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
        return DataSplits(
            train=subset(data.train_idx, augment),
            val=subset(data.val_idx),
            test=subset(data.test_idx) if len(data.test_idx) else None,
            external=external,
            info={
                **data.info,
                "train_class_counts": counts,
                "radiomics_mean": mean.tolist(),
                "radiomics_std": std.tolist(),
            },
        )

    def _prepare_real(self, progress: bool) -> DataSplits:
        from .real_data import real_splits

        data = real_splits(
            self.data_config, self.cache_dir, self.seed, progress, clinical_targets="clin" in self.task_names
        )
        train_labels = data["train_labels"]
        known = train_labels[train_labels >= 0]
        self.class_weights = (
            torch.tensor(balanced_class_weights(known, len(CLASS_NAMES)), dtype=torch.float32)
            if self.params.class_weighting
            else None
        )
        counts = {name: int((train_labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
        return DataSplits(
            train=data["train"],
            val=data["val"],
            test=data["test"],
            external=data["external"],
            info={
                **data["info"],
                "train_class_counts": counts,
                "radiomics_mean": data["radiomics_mean"].tolist(),
                "radiomics_std": data["radiomics_std"].tolist(),
            },
        )

    # ------------------------------------------------------------------ model
    def build_heads(self, contract: FeatureContract) -> nn.ModuleDict:
        p = self.params
        heads = nn.ModuleDict()
        if "seg" in p.tasks:
            heads["seg"] = SegmentationHead(contract, decoder=p.seg_decoder)
        if "cls" in p.tasks:
            heads["cls"] = ClinicallyGuidedClassifier(
                contract,
                num_classes=len(CLASS_NAMES),
                embedding_dim=p.embedding_dim,
                n_clinical=len(FEATURE_NAMES),
                hidden=p.classifier_hidden,
                dropout=p.dropout,
            )
        return heads

    def compute_losses(self, output: ModelOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        names = self.task_names
        losses = {}
        if "seg" in names:
            losses["seg"] = soft_dice_loss(output.outputs["seg"], batch["mask"])
        if "cls" in names:
            cls = output.outputs["cls"]
            weight = None if self.class_weights is None else self.class_weights.to(cls["logits"].device)
            # label −1: no TI-RADS level for this sample (its pairs drop out of RLAR as well)
            losses["cls"] = weighted_cross_entropy(cls["logits"], batch["label"], weight)
        if "clin" in names:
            losses["clin"] = masked_mse(
                output.outputs["cls"]["h_tirads"], batch["clinical"], self.params.clin_reduction
            )
        return losses

    def evaluator(self) -> ThyroidEvaluator:
        return ThyroidEvaluator(self.task_names)
