"""DB-MTL: two steps against hand-worked golden values, properties, end to end, checkpointing, validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from mtlbench.methods.db_mtl import DBMTL, DBMTLParams, balance_to_max_norm, ema_update
from tests.methods.grad_properties import (
    assert_handles_zero_and_rank_deficient,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
    independent_task_matrix,
    tiny_step,
)
from tests.methods.new_method_helpers import all_grads, assert_checkpoint_round_trip


def balanced(grads: Tensor) -> Tensor:
    return balance_to_max_norm(grads)[0]


def test_golden_two_steps() -> None:
    # β = 0.9, σ = 0 (LibMTL's defaults), m starts at 0.
    g1 = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    m = ema_update(torch.zeros_like(g1), g1, 0.9)  # 0.1·g1 = [[0.3, 0.4], [0, 0.1]], norms ½ and 0.1
    torch.testing.assert_close(m, 0.1 * g1)
    torch.testing.assert_close(balanced(m), torch.tensor([0.3, 0.4 + 5 * 0.1], dtype=torch.float64))
    g2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    m = ema_update(m, g2, 0.9)  # 0.1·g2 + 0.9·m = [[0.27, 0.46], [0.1, 0.09]]
    n1, n2 = math.sqrt(0.27**2 + 0.46**2), math.sqrt(0.1**2 + 0.09**2)
    want = torch.tensor([0.27 + n1 / n2 * 0.1, 0.46 + n1 / n2 * 0.09], dtype=torch.float64)
    torch.testing.assert_close(balanced(m), want)


def log_loss_matrix(seed: int, names: tuple[str, ...]) -> Tensor:
    model, inputs = tiny_step(names, seed=seed)
    shared = list(model.trunk.parameters())
    logs_inputs = {t: torch.log(inputs.losses[t] + 1e-8) for t in names}
    return independent_task_matrix(type(inputs)(logs_inputs, inputs.weights, shared, {}, 0), shared).detach()


def test_decaying_beta() -> None:
    # σ = 1: β_k = β/k. m1 = g1 + 0.8(0 − g1) = 0.2·g1, m2 = g2 + 0.4(m1 − g2).
    names = ("a", "b")
    method = DBMTL(names, DBMTLParams(beta=0.8, beta_sigma=1.0))
    for seed in range(2):
        _, inputs = tiny_step(names, seed=seed)
        method.backward(inputs)
    g1, g2 = log_loss_matrix(0, names), log_loss_matrix(1, names)
    torch.testing.assert_close(method.grad_ema, g2 + 0.4 * (0.2 * g1 - g2), rtol=1e-5, atol=1e-7)
    assert int(method.steps) == 2


def test_balanced_rows_have_equal_norms() -> None:
    grads = torch.tensor([[1e-6, 0.0, 0.0], [0.0, 3e4, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    out, scales = balance_to_max_norm(grads)
    torch.testing.assert_close(out, torch.full((3,), 3e4, dtype=torch.float64))
    torch.testing.assert_close(scales * grads.norm(dim=1), torch.full((3,), 3e4, dtype=torch.float64))


def test_properties_of_the_balancing() -> None:
    assert_shape_and_finite(balanced)
    assert_scaling_behaviour(balanced)
    assert_permutation_invariant(balanced)
    assert_handles_zero_and_rank_deficient(balanced)


def _log_objective(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    return sum(weights[t] * torch.log(loss + 1e-8) for t, loss in losses.items())  # type: ignore[return-value]


def test_end_to_end_two_steps() -> None:
    names = ("a", "b", "c")
    method = DBMTL(names, DBMTLParams(beta=0.5))
    ema = None
    for seed in (0, 1):
        model, inputs = tiny_step(names, seed=seed)
        shared = list(model.trunk.parameters())
        heads = list(model.heads.parameters())
        grads = log_loss_matrix(seed, names)
        ema = 0.5 * grads if ema is None else grads + 0.5 * (ema - grads)
        norms = ema.norm(dim=1)
        want_shared = ((norms.max() / norms)[:, None] * ema).sum(0)
        want_heads = torch.autograd.grad(
            _log_objective(inputs.losses, inputs.weights), heads, retain_graph=True
        )
        logs = method.backward(inputs)
        got_shared = torch.cat([p.grad.reshape(-1) for p in shared])
        torch.testing.assert_close(got_shared, want_shared, rtol=1e-5, atol=1e-7)
        for p, w in zip(heads, want_heads):
            torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)
        assert {"loss", "db_mtl/scale/a"} <= set(logs)
    assert torch.isfinite(all_grads(model)).all()


def test_checkpoint_round_trip() -> None:
    names = ("a", "b", "c")

    def advance(method: Any, k: int) -> Tensor:
        model, inputs = tiny_step(names, seed=k)
        method.backward(inputs)
        return all_grads(model)

    assert_checkpoint_round_trip(lambda: DBMTL(names, DBMTLParams(beta=0.7, beta_sigma=0.5)), advance)


@pytest.mark.parametrize(
    ("field", "value"),
    [("beta", 1.0), ("beta", -0.1), ("beta", "0.9"), ("beta_sigma", -1.0), ("beta_sigma", True)],
)
def test_bad_params(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        DBMTL(("a", "b"), DBMTLParams(**{field: value}))
