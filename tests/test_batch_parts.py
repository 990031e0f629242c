"""Parts of a batch put back in order (the trainer's heads on a subset apart from the rest)."""

from __future__ import annotations

import re

import pytest
import torch

from mtlbench import batch_parts


def test_parts_come_back_in_the_batchs_order() -> None:
    batch = torch.arange(12.0).reshape(6, 2)
    subset = torch.tensor([1, 4])
    rest = batch_parts.complement(subset, 6)
    assert rest.tolist() == [0, 2, 3, 5]
    parts = [{"a": batch[idx] * 10, "b": [batch[idx], (batch[idx, :1],)]} for idx in (subset, rest)]
    merged = batch_parts.merge(parts, [subset, rest])
    assert torch.equal(merged["a"], batch * 10)
    assert torch.equal(merged["b"][0], batch)
    assert isinstance(merged["b"][1], tuple) and torch.equal(merged["b"][1][0], batch[:, :1])


def test_merging_keeps_the_graph() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    subset, rest = torch.tensor([0, 3]), torch.tensor([1, 2, 4])
    merged = batch_parts.merge([x[subset] * 2, x[rest] * 2], [subset, rest])
    merged.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 8 * x.detach())


@pytest.mark.parametrize(
    ("parts", "where"),
    [
        ([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(2.0)}], "output['loss']"),
        ([{"h": torch.zeros(3, 4)}, {"h": torch.zeros(3, 4)}], "output['h']"),
        ([{"n": 3}, {"n": 4}], "output['n']"),
    ],
)
def test_an_output_without_one_row_per_sample_is_named(parts: list, where: str) -> None:
    with pytest.raises(ValueError, match=re.escape(where)):
        batch_parts.merge(parts, [torch.tensor([0, 2]), torch.tensor([1, 3, 4])])
