"""Helpers shared by the tests of the methods added for issue #8 (breadth): reference libraries,
adversarial matrices, loss-side end-to-end checks and checkpoint round trips. No test functions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tests.methods.grad_properties import (
    DTYPE,
    assert_close_relative,
    conflicting_pair,
    random_full_rank,
    tiny_step,
)


def size(grads: Tensor) -> float:
    """The largest row norm (1 for G = 0): the scale relative tolerances refer to."""
    s = float(grads.norm(dim=1).max()) if grads.numel() else 0.0
    return s if s > 0 else 1.0


def parity_matrices(n_tasks: int, dtype: torch.dtype = DTYPE) -> dict[str, Tensor]:
    """Seeded T×8 matrices (plus the conflicting pair for T = 2) for library parity."""
    out = {f"random_{n_tasks}x8_seed{s}": random_full_rank(n_tasks, 8, seed=s, dtype=dtype) for s in range(3)}
    if n_tasks == 2:
        out["conflicting_pair"] = conflicting_pair(dtype)
    return out


def hard_matrices() -> dict[str, Tensor]:
    """Adversarial inputs: row norms 1e-3 … 1e3, a near-opposed pair (cos = −1 + 1e-6), T = 5."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(3, 6, generator=g, dtype=DTYPE)
    spread = base / base.norm(dim=1, keepdim=True) * torch.tensor([[1e-3], [1.0], [1e3]], dtype=DTYPE)
    u = torch.randn(6, generator=g, dtype=DTYPE)
    u = u / u.norm()
    v = torch.randn(6, generator=g, dtype=DTYPE)
    v = v - (v @ u) * u
    v = v / v.norm()
    angle = torch.arccos(torch.tensor(-1.0 + 1e-6, dtype=DTYPE))
    opposed = torch.stack([u, 10.0 * (torch.cos(angle) * u + torch.sin(angle) * v)])
    return {
        "norm_spread_1e-3_1e3": spread,
        "near_opposed_cos-1+1e-6": opposed,
        "wide_5x9": random_full_rank(5, 9, seed=12),
    }


def libmtl_weighting() -> Any:
    """``LibMTL.weighting`` 1.1.5 through the project's shim, or skip the test."""
    try:
        from mtlbench.libmtl_compat import import_libmtl

        return import_libmtl("weighting")
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


def run_libmtl(
    libmtl: Any, name: str, grads: Tensor, loss_values: Tensor | None = None, **kwargs: Any
) -> tuple[Tensor, Any]:
    """Drive LibMTL's ``name`` on a fake model with one shared parameter θ (zero) and task losses
    ``L_t = g_t·θ + c_t``: at θ = 0, ``∇L_t = g_t`` and ``L_t = c_t`` (default 5). Returns θ.grad
    and LibMTL's return value."""
    base = getattr(libmtl, name)
    n_tasks, n_params = grads.shape
    offsets = torch.full((n_tasks,), 5.0) if loss_values is None else loss_values

    class FakeModel(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(n_params, dtype=grads.dtype))
            self.task_num = n_tasks
            self.task_name = [f"t{i}" for i in range(n_tasks)]
            self.device = torch.device("cpu")
            self.rep_grad = False
            self.encoder = nn.Module()
            self.init_param()

        def get_share_params(self) -> list[nn.Parameter]:
            return [self.theta]

        def zero_grad_share_params(self) -> None:
            self.theta.grad = torch.zeros_like(self.theta)

    model = FakeModel()
    losses = grads @ model.theta + offsets.to(grads.dtype)
    result = model.backward(losses, **kwargs)
    assert model.theta.grad is not None
    return model.theta.grad.detach().clone(), result


def all_grads(model: nn.Module) -> Tensor:
    """Every parameter's ``.grad`` flattened in module order (zeros where None)."""
    return torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in model.parameters()]
    )


def expected_all_grads(model: nn.Module, objective: Tensor) -> Tensor:
    """The gradient of ``objective`` w.r.t. every parameter of ``model`` (graph retained)."""
    grads = torch.autograd.grad(objective, list(model.parameters()), retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, model.parameters())]
    )


def assert_loss_side_end_to_end(
    method: Any,
    objective: Callable[[Tensor, Tensor], Tensor],
    seed: int = 0,
    rtol: float = 1e-5,
) -> dict[str, float]:
    """Run ``method.backward`` on :func:`tiny_step` and compare every parameter's gradient with the
    gradient of ``objective(losses, λ)`` (T-vectors in ``task_names`` order) computed here."""
    model, inputs = tiny_step(method.task_names, seed=seed)
    losses = torch.stack([inputs.losses[t] for t in method.task_names])
    lam = torch.tensor([inputs.weights[t] for t in method.task_names])
    want = expected_all_grads(model, objective(losses, lam))
    logs = method.backward(inputs)
    assert all(isinstance(v, float) for v in logs.values()), logs
    got = all_grads(model)
    assert torch.isfinite(got).all()
    assert_close_relative(got, want, float(want.abs().max()) + 1e-12, rtol, "all parameters' gradient")
    return logs


def assert_checkpoint_round_trip(
    make: Callable[[], Any], advance: Callable[[Any, int], Tensor], steps: int = 3
) -> None:
    """``steps`` steps on one method, ``state_dict`` into a fresh one, then one more step on both:
    equal results (the state that matters is checkpointed)."""
    first = make()
    for k in range(steps):
        advance(first, k)
    state = copy.deepcopy(first.state_dict())
    second = make()
    second.load_state_dict(state)
    a, b = advance(first, steps), advance(second, steps)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def stack_losses(inputs: Any, names: Sequence[str]) -> Tensor:
    return torch.stack([inputs.losses[t] for t in names])
