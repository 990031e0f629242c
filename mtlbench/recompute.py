"""Tensors of a backward pass that a later node may recompute instead of keeping.

RLAR's and Rep-MTL's first backward (``∇_z L`` with ``create_graph``) builds a graph whose nodes keep
the gradients flowing through them for the double backward. A convolution before an instance norm
keeps the norm's input gradient ``dx``, which the norm's node could recompute, bit for bit, from
tensors it keeps anyway. :func:`mark_recomputable` attaches such a recipe to a tensor; a node about
to save that tensor (:mod:`mtlbench.conv`) keeps the recipe instead (one activation-sized tensor
less per convolution and norm, for one more pass of the norm's backward kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_ATTRIBUTE = "_mtlbench_recompute"


def mark_recomputable(t: Tensor, recipe: Callable[[], Tensor]) -> None:
    """``recipe()`` returns ``t``'s values again (outside functorch transforms only)."""
    if not torch._C._are_functorch_transforms_active():
        setattr(t, _ATTRIBUTE, (recipe, t._version))


def recipe_of(t: Tensor) -> Callable[[], Tensor] | None:
    """The recipe attached to ``t`` by :func:`mark_recomputable`, if ``t`` has not changed since:
    the engine may add another gradient into it in place (a tensor read by two layers)."""
    if torch._C._are_functorch_transforms_active():
        return None
    entry = getattr(t, _ATTRIBUTE, None)
    if entry is None or entry[1] != t._version:
        return None
    return entry[0]
