"""The thyroid task's data settings and presets (the ``data`` section and ``--preset`` of a run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlbench.config import NOT_IDENTITY, DataConfig

DATA_FORMATS = ("phantom", "thyroidxl", "aimi", "folder", "ddti", "tn3k")


@dataclass
class ThyroidData(DataConfig):
    """Thyroid data: the embedded phantom (``format=phantom``) or a data set at ``root``.

    Sizes apply to the phantom; real data sets bring their own. Every image is resized to
    ``image_size``. ``external_root`` names a second data set evaluated zero-shot at the end of every
    run (e.g. AIMI after ThyroidXL); on the phantom a simulated second scanner plays that part.
    """

    format: str | None = "phantom"
    image_size: int = 64
    num_train: int = 800
    num_val: int = 200
    num_test: int = 200
    phantom_seed: int = 0
    num_external: int = 200
    radiomics_workers: int | None = field(default=None, metadata=NOT_IDENTITY)
    external_root: str | None = None
    external_format: str | None = None
    external_options: dict[str, Any] = field(default_factory=dict)


#: ``quick`` is the defaults: a CPU try-out (64 px phantom, a small U-Net, a few minutes on a laptop).
#: ``paper`` is the paper's protocol (Sec. 3): AdamW 1e-4, batch 8, 250 steps per epoch, up to 500
#: epochs, mixed precision, an nnU-Net encoder at 512 px, augmentation on; the best epoch is selected on
#: the whole validation fold (the paper's 50 validation batches would be 12% of a fold, the same
#: lowest-id images every epoch, about 3 TR1 images).
#: ``smoke`` is a few seconds on a tiny phantom (the contract tests' run; not a result).
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "data": {
            "image_size": 32,
            "num_train": 16,
            "num_val": 8,
            "num_test": 8,
            "num_external": 8,
            "radiomics_workers": 1,
        },
        "task_args": {"embedding_dim": 24, "classifier_hidden": 16},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "eval_batch_size": 8},
    },
    "paper": {
        "backbone": "nnunet_plain",
        "data": {"image_size": 512, "num_train": 2000, "num_val": 400, "num_test": 400, "augment": True},
        # L_clin as Eq. 3 writes it: the squared L2 norm, a sum over the 13 features; the paper fine-tunes
        # a pretrained nnU-Net, so its segmentation decoder is nnU-Net's
        "task_args": {"clin_reduction": "sum", "seg_decoder": "nnunet"},
        "train": {
            "epochs": 500,
            "steps_per_epoch": 250,
            # Model selection on the whole validation fold (not the paper's 50 batches; see the README)
            "val_steps": None,
            "batch_size": 8,
            "eval_batch_size": 32,
            "lr": 1e-4,
            "weight_decay": 1e-2,
            "amp": "auto",
        },
    },
}
