"""The heads' convolutions: PyTorch's values and gradients, a double backward by convolution kernels."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mtlbench import conv
from mtlbench.conv import Conv2d, ConvTranspose2d, _Convolution

SETTINGS: list[tuple[type[nn.Module], type[nn.Module], dict[str, Any]]] = [
    (nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 1}),
    (nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 1, "stride": 2, "groups": 2}),
    (nn.Conv2d, Conv2d, {"kernel_size": 1, "bias": False}),
    (nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 2, "dilation": 2}),
    (nn.ConvTranspose2d, ConvTranspose2d, {"kernel_size": 2, "stride": 2}),
    (
        nn.ConvTranspose2d,
        ConvTranspose2d,
        {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1, "groups": 2},
    ),
]


def pair(reference_cls: type, ours_cls: type, kwargs: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any]:
    torch.manual_seed(0)
    reference = reference_cls(6, 4, **kwargs).to(dtype)
    ours = ours_cls(6, 4, **kwargs).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def second_order(module: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Value, ∇_z L (create_graph) and the gradients of a penalty on it, as RLAR takes them."""
    x = x0.clone().requires_grad_(True)
    z = torch.tanh(1.3 * x)
    y = module(z)
    loss = (torch.sin(y) ** 2).mean()
    (gz,) = torch.autograd.grad(loss, z, create_graph=True)
    penalty = (gz * gz).sum() + gz.abs().mean() + 0.1 * loss
    grads = torch.autograd.grad(penalty, [x, *module.parameters()])
    return (y.detach(), gz.detach(), *grads)


@pytest.mark.parametrize(("reference_cls", "ours_cls", "kwargs"), SETTINGS)
def test_values_and_second_order_equal_pytorchs(reference_cls: type, ours_cls: type, kwargs: dict) -> None:
    reference, ours = pair(reference_cls, ours_cls, kwargs, torch.float64)
    x0 = torch.randn(2, 6, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, got = second_order(reference, x0), second_order(ours, x0)
    assert torch.equal(got[0], expected[0])  # the forward is PyTorch's kernel
    for a, b in zip(got[1:], expected[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True])
def test_gradgradcheck_in_float64(transposed: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    in_ch, out_ch = 3, 4
    shape = (in_ch, out_ch, 3, 3) if transposed else (out_ch, in_ch, 3, 3)
    x = torch.randn(2, in_ch, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(out_ch, dtype=torch.float64, generator=gen, requires_grad=True)
    geometry = ([2, 2], [1, 1], [1, 1], transposed, [1, 1] if transposed else [0, 0], 1)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sin(_Convolution.apply(x, w, b, geometry))

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_a_penalty_on_the_weight_gradient_too() -> None:
    """Cotangents of dW and db (not only of dx) differentiate to PyTorch's as well."""
    reference, ours = pair(nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 1}, torch.float64)
    x0 = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    out = []
    for module in (reference, ours):
        x = x0.clone().requires_grad_(True)
        loss = torch.sin(module(torch.tanh(x))).sum()
        gx, gw, gb = torch.autograd.grad(loss, [x, module.weight, module.bias], create_graph=True)
        penalty = (gw**2).sum() + (gb * gb.sin()).sum() + (gx**3).mean()
        out.append(torch.autograd.grad(penalty, [x, module.weight, module.bias]))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_representation_gradient_skips_the_weight_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """∇_z L (RLAR's first pass) asks the kernel for the input gradient only, as PyTorch's node does;
    a backward to the parameters asks for all three."""
    masks: list[list[bool]] = []
    original = conv._convolution_backward

    def spy(*args: Any) -> Any:
        masks.append(list(args[-1]))
        return original(*args)

    monkeypatch.setattr(conv, "_convolution_backward", spy)
    module = Conv2d(3, 4, 3, padding=1)
    z = torch.randn(2, 3, 6, 6, requires_grad=True)
    h = z * 1.0
    loss = module(h).square().mean()
    torch.autograd.grad(loss, h, retain_graph=True)
    assert masks == [[True, False, False]]
    masks.clear()
    torch.autograd.grad(loss, list(module.parameters()), retain_graph=True)
    assert masks == [[False, True, True]]
    masks.clear()
    loss.backward()
    assert masks == [[True, True, True]]


def test_the_double_backward_computes_only_what_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A penalty differentiated to the input only needs no weight-gradient kernel: its path to z is
    the forward-convolution term, then the forward graph's input gradient."""
    module = Conv2d(3, 4, 3, padding=1)
    z = torch.randn(2, 3, 6, 6, requires_grad=True)
    h = torch.tanh(z)
    (g,) = torch.autograd.grad(module(h).sin().sum(), h, create_graph=True)
    calls: list[list[bool]] = []
    original = conv._convolution_backward
    monkeypatch.setattr(conv, "_convolution_backward", lambda *a: calls.append(list(a[-1])) or original(*a))
    (gz,) = torch.autograd.grad(g.square().sum(), z, retain_graph=True)
    assert calls == [[True, False, False]]
    assert torch.isfinite(gz).all()
    calls.clear()
    g.square().sum().backward()
    # the weight term of the double backward, and the forward graph's backward, weight included
    assert sorted(calls) == [[False, True, False], [True, True, True]]


def test_a_vmapped_backward_goes_through_it() -> None:
    """``is_grads_batched`` (torchjd's Jacobians, the per-task Jacobian on CUDA) vmaps the backward."""
    _, module = pair(nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 1}, torch.float32)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    y = module(x)
    cotangents = torch.randn(3, *y.shape)
    inputs = [x, *module.parameters()]
    batched = torch.autograd.grad(
        y, inputs, grad_outputs=cotangents, retain_graph=True, is_grads_batched=True
    )
    for i in range(3):
        rows = torch.autograd.grad(y, inputs, grad_outputs=cotangents[i], retain_graph=True)
        for got, expected in zip(batched, rows, strict=True):
            torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-6)


def test_autocast_casts_like_pytorchs_convolution() -> None:
    reference, ours = pair(nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 1}, torch.float32)
    x = torch.randn(2, 6, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = reference(x), ours(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
    got.float().sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32


def test_other_settings_fall_back_to_pytorchs_module() -> None:
    circular = Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    same = Conv2d(2, 3, 3, padding="same")
    reference = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    reference.load_state_dict(circular.state_dict())
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(circular(x), reference(x))
    assert same(x).shape == (1, 3, 5, 5)
    assert circular(x).grad_fn.name() != "_ConvolutionBackward"
    up = ConvTranspose2d(2, 3, 3, stride=2)
    assert up(x, output_size=[11, 11]).shape[-2:] == (11, 11)
    with pytest.raises(RuntimeError):  # PyTorch's own dtype error
        Conv2d(2, 3, 3)(x.double())


def test_a_convolution_of_a_concatenation_by_parts() -> None:
    """Σ of the parts' convolutions equals the convolution of the concatenation, to rounding, in value,
    first and second order; ∇ of one part runs through that part's convolution only."""
    reference, ours = pair(nn.Conv2d, Conv2d, {"kernel_size": 3, "padding": 1}, torch.float64)
    gen = torch.Generator().manual_seed(3)
    up0, skip0 = (torch.randn(2, c, 7, 6, dtype=torch.float64, generator=gen) for c in (4, 2))
    results = []
    for concatenated in (True, False):
        up, skip = up0.clone().requires_grad_(True), skip0.clone().requires_grad_(True)
        z = torch.tanh(up)
        parts = [z, skip]
        y = reference(torch.cat(parts, 1)) if concatenated else ours.forward_concatenated(parts)
        loss = torch.sin(y).square().mean()
        (gz,) = torch.autograd.grad(loss, z, create_graph=True)
        module = reference if concatenated else ours
        grads = torch.autograd.grad(gz.square().sum() + loss, [up, skip, *module.parameters()])
        results.append((y.detach(), gz.detach(), *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="in all; this convolution reads 6"):
        ours.forward_concatenated([up0, up0])


def test_the_gradient_of_one_part_computes_that_parts_input_gradient_only(monkeypatch) -> None:
    module = Conv2d(6, 4, 3, padding=1)
    up = torch.randn(2, 4, 5, 5, requires_grad=True)
    skip = torch.randn(2, 2, 5, 5, requires_grad=True)
    z = up * 1.0
    loss = module.forward_concatenated([z, skip]).square().mean()
    calls: list[tuple[int, list[bool]]] = []
    original = conv._convolution_backward
    monkeypatch.setattr(
        conv, "_convolution_backward", lambda *a: calls.append((a[1].shape[1], list(a[-1]))) or original(*a)
    )
    torch.autograd.grad(loss, z)
    assert calls == [(4, [True, False, False])]  # the 4 upsampled channels, not the skip's 2


def test_leaky_relu_equals_pytorchs_to_second_order_without_a_zeros_tensor() -> None:
    from mtlbench.activation import LeakyReLU

    x0 = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    results = []
    for act in (nn.LeakyReLU(0.01), LeakyReLU(0.01)):
        x = x0.clone().requires_grad_(True)
        w = torch.randn(3, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        h = x * w
        loss = torch.sin(act(h)).sum()
        (gh,) = torch.autograd.grad(loss, h, create_graph=True)
        results.append((act(h).detach(), gh.detach(), *torch.autograd.grad(gh.square().sum(), x)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    x = torch.randn(4, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda t: LeakyReLU(0.2)(t * 1.0).sin(), (x.double().detach().requires_grad_(),)
    )
    inplace = LeakyReLU(0.01, inplace=True)
    assert inplace(torch.tensor([-1.0, 2.0])).tolist() == pytest.approx([-0.01, 2.0])


@pytest.mark.parametrize("second_consumer", [False, True])
def test_a_norms_input_gradient_is_recomputed_not_kept(monkeypatch, second_consumer: bool) -> None:
    """Conv → InstanceNorm: the conv's node keeps a recipe for the norm's dx instead of dx
    (mtlbench.recompute); when the conv's output has a second consumer the gradient it receives is
    a sum, and it keeps that. Second-order gradients equal PyTorch's either way."""
    from mtlbench import recompute
    from mtlbench.instance_norm import InstanceNorm2d

    used: list[bool] = []
    original = conv.recipe_of
    monkeypatch.setattr(conv, "recipe_of", lambda t: used.append(original(t) is not None) or original(t))
    torch.manual_seed(0)
    ours = (Conv2d(3, 4, 3, padding=1).double(), InstanceNorm2d(4, affine=True).double())
    reference = (nn.Conv2d(3, 4, 3, padding=1).double(), nn.InstanceNorm2d(4, affine=True).double())
    for a, b in zip(ours, reference, strict=True):
        b.load_state_dict(a.state_dict())
    x0 = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for convolution, norm in (ours, reference):
        x = x0.clone().requires_grad_(True)
        z = torch.tanh(x)
        y = convolution(z)
        loss = torch.sin(norm(y)).sum() + (0.3 * y.square().sum() if second_consumer else 0.0)
        (gz,) = torch.autograd.grad(loss, z, create_graph=True)
        results.append(
            torch.autograd.grad(gz.square().sum(), [x, *convolution.parameters(), *norm.parameters()])
        )
    assert used[0] is (not second_consumer)  # the first backward (∇_z L with create_graph)
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    changed = torch.zeros(3)
    recompute.mark_recomputable(changed, lambda: torch.zeros(3))
    changed.add_(1.0)
    assert recompute.recipe_of(changed) is None  # changed in place since: the recipe no longer holds
