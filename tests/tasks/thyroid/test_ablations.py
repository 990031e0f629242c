"""Leave-one-feature-out at inference (Table 5): only the zeroed classifier column changes anything."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mtlbench.model import MultiTaskModel
from mtlbench.registry import create_backbone
from mtlbench.tasks.thyroid.ablations import (
    format_feature_ablation,
    leave_one_feature_out,
    zeroed_clinical_weight,
)
from mtlbench.tasks.thyroid.radiomics import FEATURE_NAMES
from mtlbench.tasks.thyroid.settings import ThyroidData
from mtlbench.tasks.thyroid.task import ThyroidParams, ThyroidTask
from tests.tiny import SMALL_BACKBONE_OPTIONS

N_CLINICAL = len(FEATURE_NAMES)


def thyroid_task() -> ThyroidTask:
    return ThyroidTask(ThyroidParams(embedding_dim=24, classifier_hidden=16), ThyroidData(), 0, cache_dir=".")


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> MultiTaskModel:
    torch.manual_seed(seed)
    backbone = create_backbone("unet_small", **SMALL_BACKBONE_OPTIONS["unet_small"])
    model = MultiTaskModel(backbone, thyroid_task().build_heads(backbone.contract)).to(dtype).eval()
    # Large clinical weights, so that disabling one feature moves some predictions.
    with torch.no_grad():
        model.heads["cls"].classifier.weight[:, :N_CLINICAL].normal_(0.0, 5.0)
    return model


def images(n: int = 6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_logits_change_only_through_the_zeroed_weight() -> None:
    model = tiny_model(dtype=torch.float64)
    x = images(dtype=torch.float64)
    classifier = model.heads["cls"].classifier
    with torch.no_grad():
        full = model(x)
        for k in range(N_CLINICAL):
            with zeroed_clinical_weight(model, k):
                disabled = model(x)
                weight_inside = classifier.weight.detach().clone()
            assert torch.equal(weight_inside[:, k], torch.zeros_like(weight_inside[:, k]))
            # the representation and the segmentation are bit-identical
            for a, b in zip(full.features, disabled.features, strict=True):
                assert torch.equal(a, b)
            assert torch.equal(full.outputs["seg"], disabled.outputs["seg"])
            h = full.outputs["cls"]["h"]
            assert torch.equal(h, disabled.outputs["cls"]["h"])
            # logits are exactly the linear layer with column k zeroed ...
            assert torch.equal(disabled.outputs["cls"]["logits"], F.linear(h, weight_inside, classifier.bias))
            # ... so their change is -W[:, k] h_k for every sample and class (up to float64 rounding)
            change = disabled.outputs["cls"]["logits"] - full.outputs["cls"]["logits"]
            expected = -h[:, k : k + 1] * classifier.weight[:, k].unsqueeze(0)
            assert torch.allclose(change, expected, rtol=0, atol=1e-12)


def test_weight_is_restored_bit_exactly_also_when_the_body_raises() -> None:
    model = tiny_model()
    weight = model.heads["cls"].classifier.weight
    before = weight.detach().clone()
    with zeroed_clinical_weight(model, 4):
        assert torch.count_nonzero(weight[:, 4]) == 0
    assert torch.equal(weight, before)
    with pytest.raises(RuntimeError, match="inference failed"), zeroed_clinical_weight(model, 12):
        raise RuntimeError("inference failed")
    assert torch.equal(weight, before)
    assert model.heads["cls"].classifier.weight is weight  # the same parameter object


@pytest.mark.parametrize("index", [13, 20, -1])
def test_index_outside_the_clinical_slice_is_rejected(index: int) -> None:
    model = tiny_model()
    before = model.heads["cls"].classifier.weight.detach().clone()
    with pytest.raises(ValueError, match=rf"feature_index = {index}\b"), zeroed_clinical_weight(model, index):
        pass
    assert torch.equal(model.heads["cls"].classifier.weight, before)


def test_wrong_feature_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="13 clinical features"):
        leave_one_feature_out(dict, tiny_model(), feature_names=FEATURE_NAMES[:5])


def fixed_batch_evaluation(model: MultiTaskModel) -> tuple[Any, list[int]]:
    """An ``evaluate`` callable: macro scores through the task's ``ThyroidEvaluator`` on one fixed batch."""
    task = thyroid_task()
    generator = torch.Generator().manual_seed(2)
    batch = {
        "image": images(12),
        "mask": (torch.rand(12, 1, 32, 32, generator=generator) > 0.5).float(),
        "label": torch.randint(0, 5, (12,), generator=generator),
    }
    calls: list[int] = []

    def evaluate() -> dict[str, Any]:
        calls.append(1)
        evaluator = task.evaluator()
        with torch.no_grad():
            evaluator.update(model(batch["image"]), batch)
        return evaluator.compute()

    return evaluate, calls


def test_rows_follow_feature_order_and_deltas_are_differences_of_evaluations() -> None:
    model = tiny_model()
    evaluate, calls = fixed_batch_evaluation(model)
    before = model.heads["cls"].classifier.weight.detach().clone()
    rows = leave_one_feature_out(evaluate, model)
    assert len(calls) == 1 + N_CLINICAL
    assert torch.equal(model.heads["cls"].classifier.weight, before)
    assert [row["feature"] for row in rows] == list(FEATURE_NAMES)

    full = evaluate()
    for k, row in enumerate(rows):
        with torch.no_grad():
            model.heads["cls"].classifier.weight[:, k] = 0
        disabled = evaluate()
        with torch.no_grad():
            model.heads["cls"].classifier.weight.copy_(before)
        assert set(row) == {
            "feature", "precision", "recall", "f1", "accuracy", "delta_precision", "delta_recall", "delta_f1"
        }  # fmt: skip
        for key in ("precision", "recall", "f1", "accuracy"):
            assert row[key] == disabled[key]
        for key in ("precision", "recall", "f1"):
            assert row[f"delta_{key}"] == disabled[key] - full[key]
    assert any(row["delta_f1"] != 0 for row in rows), "the tiny model should react to some feature"

    table = format_feature_ablation(rows)
    assert len(table.splitlines()) == 2 + N_CLINICAL
    assert FEATURE_NAMES[0] in table and "Δf1" in table
