"""LeakyReLU whose double backward does not build a tensor of zeros, for the heads of second-order methods.

The backward of ``y = leaky_relu(x)`` is ``dx = g·σ(x)`` with ``σ`` the slope (1 or α) of x's sign.
Its derivative with respect to ``g`` is the same map applied to the cotangent; with respect to ``x``
it is zero almost everywhere. PyTorch's formula returns that zero as a full-size tensor of zeros,
which the engine then adds into the forward graph's gradient: in RLAR's final backward, one
allocation and two passes over every activation of the decoder for nothing. Here the second
derivative with respect to ``x`` is ``None``. Forward and first-order backward are PyTorch's kernels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mtlbench import second_order


@second_order.signature_once
class _LeakyReLU(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        return F.leaky_relu(x, slope)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, slope = inputs
        ctx.save_for_backward(x)
        ctx.slope = slope

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _LeakyReLUBackward.apply(grad, x, ctx.slope), None


@second_order.signature_once
class _LeakyReLUBackward(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(grad: Tensor, x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        return torch.ops.aten.leaky_relu_backward(grad, x, slope, False)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, x, slope = inputs
        ctx.save_for_backward(x)
        ctx.slope = slope

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.ops.aten.leaky_relu_backward(a, x, ctx.slope, False), None, None


class LeakyReLU(nn.LeakyReLU):
    """``nn.LeakyReLU`` (same values and first-order gradients) with the double backward above;
    in-place it is PyTorch's own."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace or not second_order.active():
            return super().forward(x)
        return _LeakyReLU.apply(x, self.negative_slope)
