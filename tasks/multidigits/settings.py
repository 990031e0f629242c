"""The multidigits task's data settings and presets (the ``data`` section and ``--preset`` of a run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlbench.config import DataConfig

#: ``digits``: scikit-learn's 1,797 8×8 handwritten digits (shipped with the package, nothing is
#: downloaded); ``mnist``: the four MNIST idx files at ``data.root``.
DATA_FORMATS = ("digits", "mnist")


@dataclass
class MultiDigitsData(DataConfig):
    """Two-digit composites: source digits split disjointly, then overlaid on a square canvas.

    Every source digit is resized to ``digit_size`` (bilinear, antialiased when shrinking); the left
    digit's upper-left corner lies ``0..max_offset`` pixels from the canvas's upper-left corner, the
    right digit's lower-right corner ``0..max_offset`` pixels from the lower-right one. A pixel is ink
    where the brighter of the two digits reaches ``ink_threshold`` (intensities in [0, 1]).

    ``val_fraction`` (and, for ``digits``, ``test_fraction``) of the source digits of every class go
    to the validation (test) pool before any compositing; MNIST's test pool is its ``t10k`` files.
    ``data_seed`` fixes the source split and the composites, whatever the run's ``seed``.
    """

    format: str | None = "digits"
    canvas_size: int = 32
    digit_size: int = 20
    max_offset: int = 4
    ink_threshold: float = 0.25
    num_train: int = 4000
    num_val: int = 500
    num_test: int = 1000
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    data_seed: int = 0


#: ``quick`` (the defaults): the run the README quotes, under 3 minutes on 2 CPU cores with PCGrad.
#: ``full``: more composites and a longer schedule, for numbers worth comparing between methods.
#: ``smoke``: a few seconds on a few dozen composites (the contract tests' run; not a result).
PRESETS: dict[str, dict[str, Any]] = {
    # The core's schedule (14 epochs × 40 steps of 16) at half its learning rate: at 2e-3 vanilla's
    # right-digit accuracy stayed near chance for 11 of the 14 epochs (0.37 at the end); at 1e-3 both
    # digits reached 0.82-0.86 on validation with vanilla and with PCGrad.
    "quick": {"train": {"lr": 1e-3}},
    "smoke": {
        "data": {"num_train": 24, "num_val": 8, "num_test": 8},
        "task_args": {"classifier_hidden": 16},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "eval_batch_size": 8},
    },
    "full": {
        "data": {"num_train": 20000, "num_val": 2000, "num_test": 5000},
        "train": {"epochs": 40, "steps_per_epoch": 250, "batch_size": 32, "lr": 1e-3},
    },
}
