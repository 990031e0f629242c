"""Shared losses: soft Dice, class weights, masked MSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlbench.losses import balanced_class_weights, masked_mse, soft_dice_loss


def test_soft_dice_known_values() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1  # 4 pixels
    logits = torch.full((2, 1, 4, 4), -1e4)
    logits[0, 0, :2, :2] = 1e4  # perfect on sample 0
    logits[1, 0, 0, 0] = 1e4  # one false positive on an empty sample 1
    # sample 0: 1 - (8+1)/(8+1) = 0; sample 1: 1 - 1/(1+1) = 0.5
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.25, abs=1e-6)


def test_soft_dice_is_per_sample() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    target = (torch.rand(3, 1, 8, 8) > 0.5).float()
    (g_batch,) = torch.autograd.grad(soft_dice_loss(logits, target), logits)
    (g_one,) = torch.autograd.grad(soft_dice_loss(logits[:1], target[:1]), logits)
    assert torch.allclose(g_batch[0] * 3, g_one[0], atol=1e-7)


def test_balanced_class_weights() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    w = balanced_class_weights(labels, 4)
    assert w.tolist() == pytest.approx([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2), 0.0])


def test_masked_mse_ignores_missing_values() -> None:
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan")], [1.0, 1.0], [float("nan"), float("nan")]])
    loss = masked_mse(pred, target)
    # row 0: (1-0)^2 over 1 present value = 1; row 1: 1; row 2 absent -> mean over 2 rows = 1
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[2].abs().sum() == 0 and pred.grad[0, 1] == 0
    empty = masked_mse(pred, torch.full((3, 2), float("nan")))
    assert empty.item() == 0.0 and empty.requires_grad


def test_masked_mse_sum_is_the_squared_l2_norm_of_eq3() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, float("nan")], [1.0, 1.0, 1.0]])
    # per sample: ‖·‖² over present features = 1 + 4 and 3; mean over samples
    assert masked_mse(pred, target, "sum").item() == pytest.approx((5.0 + 3.0) / 2)
    assert masked_mse(pred, target).item() == pytest.approx((5.0 / 2 + 3.0 / 3) / 2)
    with pytest.raises(ValueError, match="reduction"):
        masked_mse(pred, target, "max")


def test_weighted_cross_entropy_is_pytorchs_weighted_mean() -> None:
    import torch.nn.functional as F

    from mtlbench.losses import weighted_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    labels = torch.tensor([0, 3, -1, 2, 2, 1])
    weight = torch.tensor([0.5, 2.0, 1.0, 4.0])
    for w in (None, weight):
        expected = F.cross_entropy(logits, labels, weight=w, ignore_index=-1)
        assert float(weighted_cross_entropy(logits, labels, w)) == pytest.approx(float(expected), rel=1e-6)
    nothing = weighted_cross_entropy(logits.requires_grad_(), torch.full((6,), -1), weight)
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad
