"""The heads' instance norm: PyTorch's values and gradients, its own (closed-form) double backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlbench.instance_norm import InstanceNorm2d


def pair(channels: int, dtype: torch.dtype) -> tuple[nn.InstanceNorm2d, InstanceNorm2d]:
    torch.manual_seed(0)
    ours = InstanceNorm2d(channels, affine=True).to(dtype)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    reference = nn.InstanceNorm2d(channels, affine=True).to(dtype)
    reference.load_state_dict(ours.state_dict())
    return reference, ours


def test_gradgradcheck_in_float64() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64, generator=gen) + 0.5).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, generator=gen).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.sin(_apply(x, w, b)), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x, w, b: torch.sin(_apply(x, w, b)), (x, w, b))


def _apply(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from mtlbench.instance_norm import _InstanceNorm

    return _InstanceNorm.apply(x, w, b, 1e-5)[0]


@pytest.mark.parametrize("shape", [(8, 16, 64, 64), (4, 32, 16, 16), (2, 3, 7, 5)])
def test_values_gradients_and_second_order_equal_pytorchs(shape: tuple[int, ...]) -> None:
    """Forward and first-order backward are PyTorch's kernels (equal to the bit); the double
    backward of a penalty on ∇_x (what RLAR takes) agrees to float32 rounding."""
    reference, ours = pair(shape[1], torch.float32)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(*shape, generator=gen) * 3 + 1
    target = torch.randn(*shape, generator=gen)
    results = []
    for norm in (reference, ours):
        x = x0.clone().requires_grad_(True)
        y = norm(x)
        loss = ((torch.tanh(y) - target) ** 2).mean()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        first = torch.autograd.grad(loss, [norm.weight, norm.bias], retain_graph=True)
        penalty = (gx * gx).sum() + gx.abs().mean()
        second = torch.autograd.grad(penalty, [x, norm.weight, norm.bias])
        results.append((y.detach(), gx.detach(), first, second))
    (y_r, gx_r, first_r, second_r), (y_o, gx_o, first_o, second_o) = results
    assert torch.equal(y_r, y_o)
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-9)
    for a, b in zip(first_o, first_r):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    for a, b in zip(second_o, second_r):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_cotangents_of_the_affine_gradients_too() -> None:
    """A penalty on ∇γ and ∇β (not only on ∇x) also differentiates to PyTorch's."""
    reference, ours = pair(4, torch.float64)
    x0 = torch.randn(3, 4, 6, 5, dtype=torch.float64)
    out = []
    for norm in (reference, ours):
        x = x0.clone().requires_grad_(True)
        loss = torch.sin(norm(x)).sum()
        gx, gw, gb = torch.autograd.grad(loss, [x, norm.weight, norm.bias], create_graph=True)
        penalty = (gw**2).sum() + (gb * gw).sum() + (gx**3).mean()
        out.append(torch.autograd.grad(penalty, [x, norm.weight, norm.bias]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_other_settings_fall_back_to_pytorchs_module() -> None:
    plain = InstanceNorm2d(3)  # no affine parameters
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(plain(x), nn.InstanceNorm2d(3)(x))
    half = InstanceNorm2d(3, affine=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = half(x.bfloat16())
    assert y.dtype == torch.bfloat16


def test_a_vmapped_backward_goes_through_it() -> None:
    """``is_grads_batched`` (the per-task Jacobian on CUDA, torchjd's ``mtl_backward``) vmaps the
    backward: the same rows as one backward per cotangent."""
    _, norm = pair(3, torch.float32)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = norm(x)
    cotangents = torch.randn(4, *y.shape)
    batched = torch.autograd.grad(
        y, [x, norm.weight, norm.bias], grad_outputs=cotangents, retain_graph=True, is_grads_batched=True
    )
    for i in range(4):
        rows = torch.autograd.grad(
            y, [x, norm.weight, norm.bias], grad_outputs=cotangents[i], retain_graph=True
        )
        for got, expected in zip(batched, rows):
            torch.testing.assert_close(got[i], expected)
