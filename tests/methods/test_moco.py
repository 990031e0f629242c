"""MoCo: hand-worked golden step, an independent NumPy recursion over steps, properties, end to end, state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from mtlbench.methods.moco import MoCo, MoCoParams, moco_step, project_to_simplex
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_end_to_end,
    assert_handles_zero_and_rank_deficient,
    assert_shape_and_finite,
    tiny_step,
)
from tests.methods.new_method_helpers import assert_checkpoint_round_trip, parity_matrices

D = torch.float64


def test_golden_first_step() -> None:
    # G = diag(3, 1), losses (2, 1), k = 1, β = ½, γ = 0.1: h = [[2,0],[0,1]], y = ½h = diag(1, ½),
    # λ − 0.1·diag(1, ¼)·(½,½) = (0.45, 0.4875); its projection adds 0.03125: (0.48125, 0.51875).
    grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=D)
    losses = torch.tensor([2.0, 1.0], dtype=D)
    start = torch.full((2,), 0.5, dtype=D)
    y, lam, d = moco_step(torch.zeros_like(grads), start, grads, losses, 1, MoCoParams())
    torch.testing.assert_close(y, torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=D))
    torch.testing.assert_close(lam, torch.tensor([0.48125, 0.51875], dtype=D))
    torch.testing.assert_close(d, torch.tensor([0.48125, 0.259375], dtype=D))
    # LibMTL's softmax variant: softmax(0.45, 0.4875)
    _, lam, d = moco_step(
        torch.zeros_like(grads), start, grads, losses, 1, MoCoParams(weight_update="softmax")
    )
    e = np.exp([0.45, 0.4875])
    torch.testing.assert_close(lam, torch.tensor(e / e.sum(), dtype=D))
    torch.testing.assert_close(d, torch.tensor([e[0] / e.sum(), 0.5 * e[1] / e.sum()], dtype=D))


def numpy_projection(v: np.ndarray) -> np.ndarray:
    """Simplex projection by bisection on the shift θ (Σ max(v − θ, 0) = 1), independent of the sort."""
    lo, hi = float(v.min()) - 1.0, float(v.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - (lo + hi) / 2, 0)


def numpy_moco(grads: list[np.ndarray], losses: list[np.ndarray], p: MoCoParams) -> list[np.ndarray]:
    t, n = grads[0].shape
    y, lam, out = np.zeros((t, n)), np.full(t, 1.0 / t), []
    for k, (g, loss) in enumerate(zip(grads, losses), start=1):
        h = g / np.linalg.norm(g, axis=1, keepdims=True) * loss[:, None]
        y = y - p.beta / k**p.beta_sigma * (y - h)
        z = lam - p.gamma / k**p.gamma_sigma * (y @ y.T + p.rho * np.eye(t)) @ lam
        lam = np.exp(z) / np.exp(z).sum() if p.weight_update == "softmax" else numpy_projection(z)
        out.append(y.T @ lam)
    return out


@pytest.mark.parametrize("update", ["projection", "softmax"])
@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_matches_an_independent_recursion(update: str, n_tasks: int) -> None:
    params = MoCoParams(beta=0.6, beta_sigma=0.3, gamma=0.8, gamma_sigma=0.2, rho=0.1, weight_update=update)
    for name, base in parity_matrices(n_tasks).items():
        gen = torch.Generator().manual_seed(7)
        grads = [base + 0.5 * torch.randn(base.shape, generator=gen, dtype=D) for _ in range(4)]
        losses = [torch.rand(n_tasks, generator=gen, dtype=D) + 0.5 for _ in range(4)]
        want = numpy_moco([g.numpy() for g in grads], [v.numpy() for v in losses], params)
        y, lam = torch.zeros_like(base), torch.full((n_tasks,), 1.0 / n_tasks, dtype=D)
        for k, (g, v, w) in enumerate(zip(grads, losses, want), start=1):
            y, lam, d = moco_step(y, lam, g, v, k, params)
            torch.testing.assert_close(d, torch.tensor(w, dtype=D), rtol=1e-9, atol=1e-12, msg=f"{name} {k}")


def test_simplex_projection() -> None:
    for v in ([0.3, 0.3, 0.4], [2.0, -1.0, 0.5], [-5.0, -5.0, -5.0], [10.0, 0.0, 0.0]):
        got = project_to_simplex(torch.tensor(v, dtype=D))
        torch.testing.assert_close(got, torch.tensor(numpy_projection(np.array(v)), dtype=D))


def first_step(grads: Tensor) -> Tensor:
    t = grads.shape[0]
    losses = torch.linspace(0.5, 2.0, t, dtype=grads.dtype)
    start = torch.full((t,), 1.0 / t, dtype=grads.dtype)
    return moco_step(torch.zeros_like(grads), start, grads, losses, 1, MoCoParams())[2]


def test_properties() -> None:
    assert_shape_and_finite(first_step)
    assert_handles_zero_and_rank_deficient(first_step)
    # h_t = g_t/‖g_t‖·L_t: the update does not depend on the gradients' scale at all
    for name, grads in STANDARD_INPUTS.items():
        for s in (1e-10, 1e5):
            torch.testing.assert_close(first_step(s * grads), first_step(grads), msg=name)


def test_end_to_end_uses_the_step_losses() -> None:
    names = ("a", "b", "c")
    _, inputs = tiny_step(names)
    losses = torch.stack([inputs.weights[t] * inputs.losses[t].detach() for t in names])
    start = torch.full((3,), 1.0 / 3)

    def expected(grads: Tensor) -> Tensor:
        return moco_step(torch.zeros_like(grads), start, grads, losses, 1, MoCoParams())[2]

    method = MoCo(names)
    logs = assert_end_to_end(method, expected)
    assert int(method.steps) == 1 and {"weight/a", "loss"} <= set(logs)


def test_checkpoint_round_trip() -> None:
    names = ("a", "b", "c")

    def advance(method: Any, k: int) -> Tensor:
        model, inputs = tiny_step(names, seed=k)
        method.backward(inputs)
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    assert_checkpoint_round_trip(lambda: MoCo(names, MoCoParams(gamma=0.5)), advance)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("beta", 0.0),
        ("beta", 1.5),
        ("gamma", -1.0),
        ("rho", -0.1),
        ("beta_sigma", "x"),
        ("weight_update", "exp"),
    ],
)
def test_bad_params(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        MoCo(("a", "b"), MoCoParams(**{field: value}))
