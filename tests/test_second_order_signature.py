"""The second-order layers' autograd Functions do not rebuild their forward's signature per call."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from mtlbench.activation import LeakyReLU
from mtlbench.conv import Conv2d, ConvTranspose2d
from mtlbench.instance_norm import InstanceNorm2d


def test_a_double_backward_through_every_layer_builds_no_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    block = nn.Sequential(
        Conv2d(2, 3, 3, padding=1),
        InstanceNorm2d(3, affine=True),
        LeakyReLU(0.01),
        ConvTranspose2d(3, 2, 2, stride=2),
    )
    z = torch.randn(2, 2, 4, 4, requires_grad=True)
    built: list[object] = []
    original = inspect._signature_from_function  # type: ignore[attr-defined]

    def counting(*args: object, **kwargs: object) -> object:
        built.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(inspect, "_signature_from_function", counting)
    y = block(z).pow(2).sum()
    (g,) = torch.autograd.grad(y, z, create_graph=True)
    g.pow(2).sum().backward()
    assert block[0].weight.grad is not None and block[3].weight.grad is not None
    assert built == []
