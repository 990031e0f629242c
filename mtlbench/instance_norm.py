"""Instance normalisation with a closed-form double backward, for the heads of second-order methods.

RLAR and Rep-MTL differentiate ``∇_z L`` again (double backward through the heads). PyTorch's
double backward of instance norm is its generic batch-norm one, a composite of some thirty
element-wise operations and reductions; in RLAR's step on the thyroid model it took about a fifth
of the step. :class:`InstanceNorm2d` computes the same function: forward and first-order backward
are PyTorch's own kernels (``native_batch_norm`` over the ``(1, B·C, H, W)`` view, which is how
``F.instance_norm`` computes it), and only the derivative of the backward is written out.

For one (sample, channel) group of N values, with ``x̂ = (x − μ)·s``, ``s = 1/√(σ² + ε)``, the
backward maps the output gradient g to::

    dx = γ s (g − ḡ − x̂ m),   dγ = Σ g x̂,   dβ = Σ g,         ḡ = mean g,  m = mean(g x̂)

Its derivative, given cotangents A (of dx), A_γ and A_β, with Ā = mean A, ā = mean(A x̂) and
K = mean(A g) − Ā ḡ::

    ∂/∂g = γ s (A − Ā − x̂ ā) + A_γ x̂ + A_β
    ∂/∂γ = Σ_groups N s (K − ā m)
    ∂/∂x = s [ (A_γ − γ s ā)(g − ḡ) − γ s m (A − Ā) + x̂ (3 γ s m ā − γ s K − m A_γ) ]

(the last from ∂x̂_i/∂x_j = s(δ_ij − 1/N − x̂_i x̂_j/N) and ∂s/∂x_j = −s² x̂_j/N). Checked against
PyTorch's own double backward and by ``gradgradcheck`` in float64 (``tests/test_instance_norm.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mtlbench import second_order
from mtlbench.recompute import mark_recomputable


def _groups(x: Tensor) -> Tensor:
    """(B, C, *spatial) → (1, B·C, *spatial): instance norm is batch norm over this view."""
    return x.reshape(1, x.shape[0] * x.shape[1], *x.shape[2:])


def _native_backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    mean: Tensor,
    invstd: Tensor,
    eps: float,
    mask: tuple[bool, ...] | list[bool] = (True, False, False),
) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch's instance-norm backward kernel: (dx, per-group Σ g x̂, per-group Σ g)."""
    dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
        _groups(grad.contiguous()),
        _groups(x),
        weight.repeat(x.shape[0]),
        None,
        None,
        mean,
        invstd,
        True,
        eps,
        list(mask),
    )
    return torch.ops.aten._unsafe_view(dx, x.shape), dweight, dbias


def _per_group(v: Tensor, x: Tensor) -> Tensor:
    """A (B·C,) vector broadcast against (B, C, *spatial)."""
    return v.reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))


@second_order.signature_once
class _InstanceNorm(torch.autograd.Function):
    # functorch-style (``setup_context``, a generated vmap rule): vmapped backward passes
    # (``is_grads_batched``, torchjd's Jacobians) go through it as through PyTorch's own norm
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        b = x.shape[0]
        out, mean, invstd = torch.native_batch_norm(
            _groups(x), weight.repeat(b), bias.repeat(b), None, None, True, 0.0, eps
        )
        # not a view of an intermediate (an in-place LeakyReLU follows nnU-Net's norms): what
        # ``reshape`` inside ATen's composite operators returns
        return torch.ops.aten._unsafe_view(out, x.shape), mean, invstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        x, weight, _, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dweight, dbias, _, _ = _InstanceNormBackward.apply(grad, x, weight, mean, invstd, ctx.eps)
        return dx, dweight, dbias, None


@second_order.signature_once
class _InstanceNormBackward(torch.autograd.Function):
    """(g, x, γ) → (dx, dγ, dβ) with PyTorch's kernel; its own backward in closed form."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        b, c = x.shape[:2]
        dx, dweight, dbias = _native_backward(grad, x, weight, mean, invstd, eps, [True, True, True])
        # per (sample, channel) group: Σ g x̂ and Σ g, which the double backward needs too
        return (
            dx,
            dweight.view(b, c).sum(0),
            dbias.view(b, c).sum(0),
            dweight,
            dbias,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        grad, x, weight, mean, invstd, eps = inputs
        ctx.mark_non_differentiable(output[3], output[4])
        ctx.save_for_backward(grad, x, weight, mean, invstd, output[3], output[4])
        ctx.eps = eps
        # dx is what the convolution before the norm receives and would save for its own double
        # backward; it can instead recompute dx, bit for bit, from tensors this node keeps anyway
        mark_recomputable(output[0], lambda: _native_backward(grad, x, weight, mean, invstd, eps)[0])

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, a: Tensor | None, a_weight: Tensor | None, a_bias: Tensor | None, *_: Any
    ) -> tuple[Tensor | None, ...]:
        g, x, weight, mean, invstd, sum_gx, sum_g = ctx.saved_tensors
        c = x.shape[1]
        dims = tuple(range(2, x.dim()))
        n = x[0, 0].numel()
        s = _per_group(invstd, x)
        gs = weight.view(1, c, *([1] * (x.dim() - 2))) * s  # γ·s per group
        # Large temporaries cost page faults on the CPU: results are built in place where possible.
        xhat = (x - _per_group(mean, x)).mul_(s)
        g_mean = _per_group(sum_g, x) / n  # the first backward's per-group sums
        m = _per_group(sum_gx, x) / n
        # Both results are α·g + β·A + κ·x̂ + δ with per-group coefficients (one pass each term).
        zero = torch.zeros_like(s)
        alpha_x, beta_x, kappa_x, delta_x = zero, zero, zero, zero
        beta_g, kappa_g, delta_g = zero, zero, zero
        grad_w = torch.zeros_like(weight)
        if a is not None:
            a_mean = a.mean(dims, keepdim=True)
            a_hat = _group_dot(a, xhat) / n
            k = _group_dot(a, g) / n - a_mean * g_mean
            beta_g = gs
            kappa_g = -gs * a_hat
            delta_g = -gs * a_mean
            grad_w = (n * s * (k - a_hat * m)).sum(0).view(c)
            alpha_x = -s * gs * a_hat
            beta_x = -s * gs * m
            kappa_x = s * gs * (3 * m * a_hat - k)
            delta_x = s * gs * (a_hat * g_mean + m * a_mean)
        if a_weight is not None:
            a_gamma = a_weight.view(1, c, *([1] * (x.dim() - 2)))
            kappa_g = kappa_g + a_gamma
            alpha_x = alpha_x + s * a_gamma
            kappa_x = kappa_x - s * a_gamma * m
            delta_x = delta_x - s * a_gamma * g_mean
        if a_bias is not None:
            delta_g = delta_g + a_bias.view(1, c, *([1] * (x.dim() - 2)))
        grad_g = (xhat * kappa_g).add_(delta_g)
        grad_x = xhat.mul_(kappa_x).add_(delta_x)  # x̂ is not needed after this
        grad_x.addcmul_(g, alpha_x)
        if a is not None:
            grad_g.addcmul_(a, beta_g)
            grad_x.addcmul_(a, beta_x)
        # The output does not change when x shifts by a constant per group, so ∂/∂x sums to zero
        # over each group; the terms above cancel to that only up to rounding, and the rest would
        # reach the previous layer (a conv's bias and, through its input's mean, its weight).
        grad_x -= grad_x.mean(dims, keepdim=True)
        return grad_g, grad_x, grad_w, None, None, None


def _group_dot(u: Tensor, v: Tensor) -> Tensor:
    """Σ u·v over each (sample, channel) group, as a (B, C, 1, …) tensor."""
    return torch.linalg.vecdot(u.flatten(2), v.flatten(2)).view(*u.shape[:2], *([1] * (u.dim() - 2)))


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(affine=True)`` (same parameters, same state dict, same values) whose double
    backward is the closed form above. Without ``affine``, with running statistics, or with an input
    of another dtype than its parameters (autocast) it is PyTorch's."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            not second_order.active()
            or not self.affine
            or self.track_running_stats
            or x.dim() != 4
            or x.dtype != self.weight.dtype
        ):
            return super().forward(x)  # also under autocast, where x is half and γ float32
        return _InstanceNorm.apply(x, self.weight, self.bias, self.eps)[0]
