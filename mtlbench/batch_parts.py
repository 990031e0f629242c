"""A batch reordered so that a subset of its samples comes first, and outputs of its two parts
joined again.

The trainer runs the heads apart on a subset of the samples when a method asks for it
(:meth:`~mtlbench.api.method.MultiTaskMethod.subset_for_step`): the subset's graph then serves
both the method (its losses on those samples) and the whole batch's objective, and no second
forward is needed. The batch is put in the order subset-first before the backbone runs
(:func:`subset_first`), so that the two parts are slices of every feature map (views, whose
backward is one concatenation) rather than gathers (whose backward scatters each part into a
tensor of zeros). This is exact when the model treats samples independently (per-sample
normalisation, no batch statistics), the condition under which a subset's losses mean anything;
the whole batch's losses are then those of the original order up to the order of their sums.
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


def subset_first(indices: Tensor, batch_size: int) -> Tensor:
    """A permutation of ``range(batch_size)``: ``indices`` in their order, then the other samples."""
    if indices.dim() != 1 or indices.numel() != torch.unique(indices).numel():
        raise ValueError(f"a subset of a batch must be distinct sample indices, got {indices.tolist()}")
    if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < batch_size):
        raise ValueError(f"subset {indices.tolist()} is not within a batch of {batch_size} samples")
    return torch.cat([indices, complement(indices, batch_size)])


def take(batch: dict[str, Tensor], indices: Tensor) -> dict[str, Tensor]:
    """The samples ``indices`` of every tensor of ``batch``, in that order."""
    return {k: v.index_select(0, indices.to(v.device)) for k, v in batch.items()}


def concatenate(parts: Sequence[Any], sizes: Sequence[int], where: str = "output") -> Any:
    """Outputs computed on consecutive parts of a batch joined along the sample dimension.

    ``parts[i]`` was computed on ``sizes[i]`` consecutive samples. Tensors are concatenated along
    dimension 0, dicts, lists and tuples joined entry by entry. A tensor whose first dimension is not
    its part's sample count is not a per-sample output, and a ``ValueError`` names it (``where`` is
    its path).
    """
    first = parts[0]
    if isinstance(first, Tensor):
        for part, size in zip(parts, sizes, strict=True):
            if not isinstance(part, Tensor) or part.dim() == 0 or part.shape[0] != size:
                shape = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                raise ValueError(
                    f"{where} is not batched along its first dimension (got {shape} for "
                    f"{size} samples): heads run on parts of a batch (RLAR's `subset`) "
                    "must return one row per sample"
                )
        return torch.cat(list(parts))
    if isinstance(first, dict):
        return {key: concatenate([p[key] for p in parts], sizes, f"{where}[{key!r}]") for key in first}
    if isinstance(first, (list, tuple)):
        joined = [concatenate([p[i] for p in parts], sizes, f"{where}[{i}]") for i in range(len(first))]
        return joined if isinstance(first, list) else tuple(joined)
    raise ValueError(
        f"{where} is a {type(first).__name__}: heads run on parts of a batch (RLAR's `subset`) must "
        "return tensors (or dicts, lists, tuples of them)"
    )
