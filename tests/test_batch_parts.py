"""A batch reordered subset-first and its parts' outputs joined (the trainer's heads on a subset
apart from the rest)."""

from __future__ import annotations

import re

import pytest
import torch

from mtlbench import batch_parts


def test_the_subset_comes_first_then_the_rest_in_order() -> None:
    subset = torch.tensor([4, 1])
    assert batch_parts.complement(subset, 6).tolist() == [0, 2, 3, 5]
    order = batch_parts.subset_first(subset, 6)
    assert order.tolist() == [4, 1, 0, 2, 3, 5]
    batch = {"x": torch.arange(12.0).reshape(6, 2), "y": torch.arange(6)}
    taken = batch_parts.take(batch, order)
    assert taken["y"].tolist() == [4, 1, 0, 2, 3, 5]
    assert torch.equal(taken["x"][0], batch["x"][4])


@pytest.mark.parametrize("bad", [[1, 1], [0, 6], [-1], [[0, 1]]])
def test_a_subset_that_is_not_distinct_samples_of_the_batch_is_named(bad: list) -> None:
    with pytest.raises(ValueError, match=re.escape(str(torch.tensor(bad).tolist()))):
        batch_parts.subset_first(torch.tensor(bad), 6)


def test_parts_are_joined_entry_by_entry() -> None:
    batch = torch.arange(12.0).reshape(6, 2)
    head, tail = batch.split([2, 4])
    parts = [{"a": p * 10, "b": [p, (p[:, :1],)]} for p in (head, tail)]
    joined = batch_parts.concatenate(parts, [2, 4])
    assert torch.equal(joined["a"], batch * 10)
    assert torch.equal(joined["b"][0], batch)
    assert isinstance(joined["b"][1], tuple) and torch.equal(joined["b"][1][0], batch[:, :1])


def test_joining_keeps_the_graph() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    head, tail = x.split([2, 3])
    joined = batch_parts.concatenate([head * 2, tail * 2], [2, 3])
    joined.pow(2).sum().backward()
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
        batch_parts.concatenate(parts, [2, 3])
