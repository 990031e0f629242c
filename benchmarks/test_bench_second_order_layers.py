"""The double backward of the heads' layers: ours (``mtlbench.conv``, ``mtlbench.instance_norm``)
against PyTorch's own modules, on the shapes of configuration A's first decoder stage (batch 8).

Timed: the backward of a penalty on ``∇_x L`` (what RLAR's final backward runs through every decoder
layer), after an untimed forward and ``∇_x L`` with ``create_graph``. Pairs of rows (``ours`` /
``pytorch``) give the ratio on this machine; each round checks that both give the same gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlbench.conv import Conv2d, ConvTranspose2d
from mtlbench.instance_norm import InstanceNorm2d

ROUNDS = 10
#: (name, our module, PyTorch's module, input shape), the heaviest decoder layers of configuration A
LAYERS: list[tuple[str, Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = [
    ("conv3x3_32to16_128px", lambda: Conv2d(32, 16, 3, padding=1), lambda: nn.Conv2d(32, 16, 3, padding=1),
     (8, 32, 128, 128)),
    ("conv3x3_256to128_16px", lambda: Conv2d(256, 128, 3, padding=1),
     lambda: nn.Conv2d(256, 128, 3, padding=1), (8, 256, 16, 16)),
    ("transposed2x2_32to16_64px", lambda: ConvTranspose2d(32, 16, 2, stride=2),
     lambda: nn.ConvTranspose2d(32, 16, 2, stride=2), (8, 32, 64, 64)),
    ("instance_norm_16ch_128px", lambda: InstanceNorm2d(16, affine=True),
     lambda: nn.InstanceNorm2d(16, affine=True), (8, 16, 128, 128)),
]  # fmt: skip


def prepared(module: nn.Module, x0: Tensor) -> tuple[tuple[Tensor, list[Tensor]], dict[str, Any]]:
    """An untimed forward and ∇_x L (create_graph); the timed call differentiates the penalty."""
    x = x0.clone().requires_grad_(True)
    loss = torch.sin(module(x)).square().mean()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    return (gx.square().sum(), [x, *module.parameters()]), {}


def second_order(penalty: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.autograd.grad(penalty, inputs)


@pytest.mark.parametrize("implementation", ["ours", "pytorch"])
@pytest.mark.parametrize(("name", "ours", "pytorch", "shape"), LAYERS, ids=[layer[0] for layer in LAYERS])
def test_double_backward(benchmark: Any, implementation: str, name: str, ours, pytorch, shape) -> None:
    torch.manual_seed(0)
    mine, reference = ours(), pytorch()
    reference.load_state_dict(mine.state_dict())
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    module = mine if implementation == "ours" else reference
    result = benchmark.pedantic(second_order, setup=lambda: prepared(module, x0), rounds=ROUNDS)
    expected = second_order(*prepared(mine if module is reference else reference, x0)[0])
    for got, want in zip(result, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
