"""2D convolution whose double backward uses the convolution kernels themselves, for second-order methods.

RLAR and Rep-MTL differentiate ``∇_z L`` again, so every convolution between the probed
representation and the losses is differentiated twice. For ``y = conv(x, W)`` the first backward
maps the output gradient ``g`` to ``dx = convᵀ(g, W)``, ``dW = g ⋆ x`` (and ``db = Σ g``). Given the
cotangents ``A`` (of ``dx``), ``A_W`` and ``A_b``, its derivative is::

    ∂/∂g = conv(A, W) + conv(x, A_W) + A_b        (forward convolutions)
    ∂/∂W = A ⋆ g                                   (a weight gradient, with A in the place of x)
    ∂/∂x = convᵀ(g, A_W)                           (an input gradient, with A_W in the place of W)

so each term is one of the three kernels a convolution already has (``convolution`` and the two
halves of ``convolution_backward``). PyTorch's own double backward computes ``∂/∂W`` as a
convolution of the batch-transposed tensors whose kernel is the whole feature map, which oneDNN
runs 2–3× slower than its weight-gradient kernel (``benchmarks/README.md``). Forward and first-order
backward are PyTorch's kernels, so values and first-order gradients are PyTorch's to the bit.

Each backward computes only the gradients the running backward pass will use, as PyTorch's
built-in node does: ``∇_z L`` of RLAR needs the input gradient of the decoder's convolutions, not
their weight gradient. Parameters enter through a view so that the engine can be asked
(``torch._C._will_engine_execute_node``) whether their gradient is wanted; where that private
query is missing, every gradient that requires grad is computed (slower, still exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mtlbench import second_order
from mtlbench.recompute import recipe_of

_WILL_EXECUTE = getattr(torch._C, "_will_engine_execute_node", None)


def wanted(ctx: Any, is_tensor: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per argument of the node ``ctx``: will the running backward pass use its gradient?

    ``is_tensor`` says which arguments were tensors (the node has an edge for each of those only).
    """
    needs = [bool(n) for n in ctx.needs_input_grad]
    if _WILL_EXECUTE is None:
        return tuple(needs)
    edges = iter(ctx.next_functions)
    out = []
    for need, tensor in zip(needs, is_tensor):
        node = next(edges)[0] if tensor else None
        if not need or node is None:
            out.append(False)
            continue
        try:
            out.append(bool(_WILL_EXECUTE(node)))
        except RuntimeError:  # a leaf during autograd.grad: the engine cannot say
            out.append(True)
    return tuple(out)


def _as_node(t: Tensor | None) -> Tensor | None:
    """A leaf that requires grad, seen through a view (a node the engine can be asked about)."""
    if t is not None and t.requires_grad and t.grad_fn is None:
        return t.view_as(t)
    return t


Geometry = tuple[list[int], list[int], list[int], bool, list[int], int]
"""(stride, padding, dilation, transposed, output_padding, groups), as ``aten.convolution`` takes them."""


def _convolution(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry) -> Tensor:
    return torch.ops.aten.convolution(x, weight, bias, *geometry)


def _convolution_backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    bias_sizes: list[int] | None,
    geometry: Geometry,
    mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, *geometry, mask)


@second_order.signature_once
class _Convolution(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry) -> Tensor:  # type: ignore[override]
        return _convolution(x, weight, bias, geometry)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, bias, geometry = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        ctx.is_tensor = (True, True, bias is not None, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        mask = wanted(ctx, ctx.is_tensor)[:3]
        if not ctx.has_bias:
            mask = (mask[0], mask[1], False)
        if not any(mask):
            return None, None, None, None
        dx, dweight, dbias = _ConvolutionBackward.apply(grad, x, weight, ctx.geometry, ctx.has_bias, mask)
        return dx, dweight, dbias, None


@second_order.signature_once
class _ConvolutionBackward(torch.autograd.Function):
    """(g, x, W) → (dx, dW, db) with PyTorch's kernel; its own backward by convolution kernels."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        grad: Tensor,
        x: Tensor,
        weight: Tensor,
        geometry: Geometry,
        has_bias: bool,
        mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        bias_sizes = [weight.shape[1 if geometry[3] else 0] * (geometry[5] if geometry[3] else 1)]
        dx, dweight, dbias = _convolution_backward(
            grad, x, weight, bias_sizes if has_bias else None, geometry, list(mask)
        )
        return (dx if mask[0] else None, dweight if mask[1] else None, dbias if mask[2] else None)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        grad, x, weight, geometry, _, _ = inputs
        # an instance norm's input gradient is recomputed from what the norm's node keeps
        ctx.grad_recipe = recipe_of(grad)
        ctx.save_for_backward(None if ctx.grad_recipe is not None else grad, x, weight)
        ctx.geometry = geometry
        ctx.grad_shape = grad.shape

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, a: Tensor | None, a_weight: Tensor | None, a_bias: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        g, x, weight = ctx.saved_tensors
        geometry = ctx.geometry
        want_g, want_x, want_w = wanted(ctx, (True, True, True, False, False, False))[:3]
        if ctx.grad_recipe is not None and ((want_w and a is not None) or (want_x and a_weight is not None)):
            g = ctx.grad_recipe()
        grad_g = grad_x = grad_w = None
        if want_g:
            if a is not None:
                grad_g = _convolution(a, weight, None, geometry)
            if a_weight is not None:
                term = _convolution(x, a_weight, None, geometry)
                grad_g = term if grad_g is None else grad_g.add_(term)
            if a_bias is not None:
                term = a_bias.view(1, -1, *([1] * (len(ctx.grad_shape) - 2)))
                grad_g = term.expand(ctx.grad_shape).clone() if grad_g is None else grad_g.add_(term)
        if want_w and a is not None:
            grad_w = _convolution_backward(g, a, weight, None, geometry, [False, True, False])[1]
        if want_x and a_weight is not None:
            grad_x = _convolution_backward(g, x, a_weight, None, geometry, [True, False, False])[0]
        return grad_g, grad_x, grad_w, None, None, None


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _convolve(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry) -> Tensor:
    """A convolution through :class:`_Convolution` (under autocast, cast as PyTorch's)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return _Convolution.apply(_as_node(x), _as_node(weight), _as_node(bias), geometry)
    return _Convolution.apply(_as_node(x), _as_node(weight), _as_node(bias), geometry)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict, same values and first-order gradients) whose
    double backward is written with the convolution kernels (above). With a padding mode other than
    zeros, a string padding, an unbatched input or mismatched dtypes outside autocast it is
    PyTorch's own. Under autocast the input and parameters are cast to the autocast dtype, as
    autocast does for a convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._own_kernels(x):
            return super().forward(x)
        return _convolve(x, self.weight, self.bias, self._geometry())

    def _own_kernels(self, x: Tensor) -> bool:
        return (
            second_order.active()
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and x.dim() == 4
            and (x.dtype == self.weight.dtype or torch.is_autocast_enabled(x.device.type))
        )

    def _geometry(self) -> Geometry:
        return (_pair(self.stride), _pair(self.padding), _pair(self.dilation), False, [0, 0], self.groups)

    def forward_concatenated(self, parts: Sequence[Tensor]) -> Tensor:
        """``self(torch.cat(parts, dim=1))`` as the sum of each part's convolution with its slice of
        the weight's input channels (the bias added once).

        The same function, without the concatenated copy; and a gradient taken with respect to one
        part (RLAR's ``∇_z L`` reaches a decoder's upsampled path, not its skip) runs through that
        part's convolution only, where the concatenation's would compute the input gradient of
        every channel and, differentiated again, drag zeros through the others.
        """
        parts = list(parts)
        if self.groups != 1 or len(parts) < 2 or not all(self._own_kernels(p) for p in parts):
            return self(torch.cat(parts, dim=1))
        widths = [p.shape[1] for p in parts]
        if sum(widths) != self.in_channels:
            raise ValueError(
                f"the parts have {widths} channels, {sum(widths)} in all; this convolution reads "
                f"{self.in_channels}"
            )
        geometry = self._geometry()
        out: Tensor | None = None
        start = 0
        for i, (part, width) in enumerate(zip(parts, widths, strict=True)):
            bias = self.bias if i == len(parts) - 1 else None
            y = _convolve(part, self.weight[:, start : start + width], bias, geometry)
            out = y if out is None else out.add_(y)  # a convolution's backward does not read its output
            start += width
        assert out is not None
        return out


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with the same double backward as :class:`Conv2d`; PyTorch's own when
    an ``output_size`` is passed, for an unbatched input or mismatched dtypes outside autocast."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if (
            not second_order.active()
            or output_size is not None
            or self.padding_mode != "zeros"
            or x.dim() != 4
            or (x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type))
        ):
            return super().forward(x, output_size)
        geometry = (
            _pair(self.stride),
            _pair(self.padding),
            _pair(self.dilation),
            True,
            _pair(self.output_padding),
            self.groups,
        )
        return _convolve(x, self.weight, self.bias, geometry)


def convolve_concatenation(conv: nn.Conv2d, parts: Sequence[Tensor]) -> Tensor:
    """``conv(torch.cat(parts, dim=1))``: by :meth:`Conv2d.forward_concatenated` for ours, by the
    concatenation for any other convolution module."""
    if isinstance(conv, Conv2d):
        return conv.forward_concatenated(parts)
    return conv(torch.cat(list(parts), dim=1))
