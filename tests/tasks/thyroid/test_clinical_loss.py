"""Protocol: L_clin is Eq. 3's squared L2 norm (a sum over the 13 features) in the paper preset, and the
mean over the features (the sum / 13) where ``task_args.clin_reduction`` says so (the other presets)."""

from __future__ import annotations

import pytest
import torch

from mtlbench.config import resolve_config
from mtlbench.model import ModelOutput
from mtlbench.runner import prepare_run
from tests.tiny import tiny_run_overrides


@pytest.mark.parametrize(
    ("preset", "reduction", "expected"),
    [("quick", None, 4.0), ("quick", "sum", 13.0 * 4.0), ("quick", "mean", 4.0), ("paper", None, 13.0 * 4.0)],
)
def test_clinical_loss_reduction(tmp_path, preset, reduction, expected) -> None:
    extra = {} if reduction is None else {"task_args.clin_reduction": reduction}
    overrides = tiny_run_overrides(tmp_path, **extra, **{"backbone_args.widths": "[8, 16, 32, 64, 128]"})
    cfg = resolve_config(overrides, method="vanilla", preset=preset, backbone="unet_small")
    task = prepare_run(cfg).task
    h = torch.full((2, 13), 2.0)
    output = ModelOutput(
        features=[],
        outputs={"seg": torch.zeros(2, 1, 8, 8), "cls": {"logits": torch.zeros(2, 5), "h_tirads": h}},
    )
    batch = {
        "mask": torch.zeros(2, 1, 8, 8),
        "label": torch.tensor([0, 1]),
        "clinical": torch.zeros(2, 13),
    }
    task.class_weights = None
    assert task.compute_losses(output, batch)["clin"].item() == pytest.approx(expected)
