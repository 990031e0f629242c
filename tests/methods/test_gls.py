"""GLS: LibMTL parity through its own backward, golden values, end to end, scale invariance, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlbench.methods.gls import GLS, gls_loss
from tests.methods.grad_properties import assert_close_relative, tiny_step
from tests.methods.new_method_helpers import (
    assert_loss_side_end_to_end,
    libmtl_weighting,
    parity_matrices,
    run_libmtl,
    size,
)


def test_golden_loss() -> None:
    losses = torch.tensor([2.0, 8.0], dtype=torch.float64)
    torch.testing.assert_close(gls_loss(losses), torch.tensor(4.0, dtype=torch.float64))
    # weights (1, 3) → exponents (¼, ¾): 2^¼ · 8^¾ = 2^{0.25 + 2.25} = 2^{2.5}
    got = gls_loss(losses, torch.tensor([1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(2.0**2.5, dtype=torch.float64))


def test_golden_gradient() -> None:
    # ∂/∂L_t (Π L)^{1/T} = (Π L)^{1/T} / (T L_t): for L = (2, 8): (4/4, 4/16) = (1, ¼)
    losses = torch.tensor([2.0, 8.0], dtype=torch.float64, requires_grad=True)
    gls_loss(losses).backward()
    torch.testing.assert_close(losses.grad, torch.tensor([1.0, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("n_tasks", [2, 3])
def test_matches_libmtl(n_tasks: int) -> None:
    """LibMTL 1.1.5 GLS on L_t = g_t·θ + c_t: the same θ.grad (equal task weights)."""
    libmtl = libmtl_weighting()
    for name, grads in parity_matrices(n_tasks, torch.float64).items():
        values = torch.tensor([0.7, 3.0, 1.9][:n_tasks], dtype=torch.float64)
        got, _ = run_libmtl(libmtl, "GLS", grads, values)
        theta = torch.zeros(grads.shape[1], dtype=torch.float64, requires_grad=True)
        gls_loss(grads @ theta + values).backward()
        assert_close_relative(theta.grad, got, size(grads), 1e-12, f"GLS vs LibMTL on {name}")


def _objective(losses: Tensor, lam: Tensor) -> Tensor:
    # written out as a product of powers, independently of gls_loss's exp/log form
    exponents = lam / lam.sum()
    out = torch.ones((), dtype=losses.dtype)
    for loss, e in zip(losses, exponents):
        out = out * loss ** float(e)
    return out


def test_end_to_end() -> None:
    logs = assert_loss_side_end_to_end(GLS(("a", "b", "c")), _objective)
    assert {"loss", "weight/a", "weight/b", "weight/c"} <= set(logs)
    # effective weights (λ_t/Σλ)·L/L_t
    _, inputs = tiny_step(("a", "b", "c"))
    losses = [float(inputs.losses[t].detach()) for t in "abc"]
    lam = [1.0, 0.5, 2.0]
    total = math.prod(v ** (w / 3.5) for v, w in zip(losses, lam))
    for t, v, w in zip("abc", losses, lam):
        assert abs(logs[f"weight/{t}"] - (w / 3.5) * total / v) <= 1e-5 * logs[f"weight/{t}"]


def test_invariant_to_rescaling_one_loss() -> None:
    # L → c·L_1 multiplies the objective by c^{1/T}: the direction of the gradient is unchanged.
    theta = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)

    def grad(c: float) -> Tensor:
        losses = torch.stack([c * ((theta**2).sum() + 1), (theta - 1).pow(2).sum()])
        (g,) = torch.autograd.grad(gls_loss(losses), theta)
        return g

    a, b = grad(1.0), grad(1e6)
    assert abs(float(a @ b / (a.norm() * b.norm())) - 1.0) < 1e-12


def test_rejects_non_positive_losses() -> None:
    _, inputs = tiny_step(("a", "b"))
    inputs.losses["b"] = inputs.losses["b"] * 0
    with pytest.raises(ValueError, match=r"positive task losses.*\['b'\]"):
        GLS(("a", "b")).backward(inputs)


def test_no_hyper_parameters() -> None:
    assert GLS.search_space(object()) == {}
