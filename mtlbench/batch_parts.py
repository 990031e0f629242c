"""A batch split into parts by sample, and the parts' outputs put back in the batch's order.

The trainer runs the heads apart on a subset of the samples when a method asks for it
(:meth:`~mtlbench.api.method.MultiTaskMethod.subset_for_step`): the subset's graph then serves
both the method (its losses on those samples) and the whole batch's objective, and no second
forward is needed. This is exact when the heads treat samples independently (per-sample
normalisation, no batch statistics), the condition under which a subset's losses mean anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def complement(indices: Tensor, batch_size: int) -> Tensor:
    """The sorted indices of ``range(batch_size)`` not in ``indices``."""
    keep = torch.ones(batch_size, dtype=torch.bool, device=indices.device)
    keep[indices] = False
    return keep.nonzero().squeeze(1)


def take(batch: dict[str, Tensor], indices: Tensor) -> dict[str, Tensor]:
    """The samples ``indices`` of every tensor of ``batch``."""
    return {k: v[indices] for k, v in batch.items()}


def merge(parts: Sequence[Any], indices: Sequence[Tensor], where: str = "output") -> Any:
    """Put outputs computed on parts of a batch back together in the batch's order.

    ``parts[i]`` was computed on the samples ``indices[i]`` (disjoint, together every sample once);
    tensors are concatenated along dimension 0 and reordered, dicts, lists and tuples merged entry
    by entry. A tensor whose first dimension is not its part's sample count is not a per-sample
    output, and a ``ValueError`` names it (``where`` is its path).
    """
    first = parts[0]
    if isinstance(first, Tensor):
        for part, idx in zip(parts, indices, strict=True):
            if not isinstance(part, Tensor) or part.dim() == 0 or part.shape[0] != idx.numel():
                shape = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                raise ValueError(
                    f"{where} is not batched along its first dimension (got {shape} for "
                    f"{idx.numel()} samples): heads run on parts of a batch (RLAR's `subset`) "
                    "must return one row per sample"
                )
        order = torch.cat(list(indices)).to(first.device)
        return torch.cat(list(parts))[torch.argsort(order)]
    if isinstance(first, dict):
        return {key: merge([p[key] for p in parts], indices, f"{where}[{key!r}]") for key in first}
    if isinstance(first, (list, tuple)):
        merged = [merge([p[i] for p in parts], indices, f"{where}[{i}]") for i in range(len(first))]
        return merged if isinstance(first, list) else tuple(merged)
    raise ValueError(
        f"{where} is a {type(first).__name__}: heads run on parts of a batch (RLAR's `subset`) must "
        "return tensors (or dicts, lists, tuples of them)"
    )
