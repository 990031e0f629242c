"""UW (Kendall 2018): hand-computed objective, LibMTL parity, state round trip, validation, end to end.

Also holds :func:`libmtl_weighting`, the light loader of LibMTL's weighting classes that the other
loss-weighting tests (DWA, GradNorm, RLW) import.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api.method import StepInputs
from mtlbench.methods.uw import UW, UWParams


def libmtl_weighting(name: str) -> Any:
    """LibMTL's weighting class ``name`` (e.g. ``"UW"``), imported through the project's one shim."""
    from mtlbench.libmtl_compat import import_libmtl

    try:
        return getattr(import_libmtl("weighting"), name)
    except ModuleNotFoundError:
        pytest.skip("LibMTL is not installed (an optional reference: pip install LibMTL)")


class TinyMTL(nn.Module):
    """A shared linear layer and two heads (regression, 3-class classification)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 8)
        self.head_a = nn.Linear(8, 1)
        self.head_b = nn.Linear(8, 3)

    def losses(self, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(6, 4, generator=g)
        h = torch.tanh(self.shared(x))
        return {
            "a": F.mse_loss(self.head_a(h).squeeze(1), torch.randn(6, generator=g)),
            "b": F.cross_entropy(self.head_b(h), torch.randint(0, 3, (6,), generator=g)),
        }

    def inputs(self, step: int = 0, weights: dict[str, float] | None = None, seed: int = 0) -> StepInputs:
        return StepInputs(
            self.losses(seed),
            weights or {"a": 1.0, "b": 1.0},
            list(self.shared.parameters()),
            {},
            step=step,
            head_parameters=[*self.head_a.parameters(), *self.head_b.parameters()],
        )


def sgd_step(params: Any, lr: float) -> None:
    """p ← p − lr·∇p (``torch.optim`` would import torch._dynamo on its first step: seconds)."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


def leaf_inputs(values: list[float], weights: list[float]) -> tuple[StepInputs, torch.Tensor]:
    losses = torch.tensor(values, requires_grad=True)
    names = [chr(ord("a") + i) for i in range(len(values))]
    inputs = StepInputs(
        {n: losses[i] for i, n in enumerate(names)}, dict(zip(names, weights)), [], {}, step=0
    )
    return inputs, losses


def test_objective_and_gradients_match_hand_computation() -> None:
    uw = UW(("a", "b"))
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor([0.0, math.log(2.0)]))
    inputs, losses = leaf_inputs([2.0, 3.0], [1.0, 0.5])
    logs = uw.backward(inputs)
    # ½·e^0·1·2 + ½·0  +  ½·½·0.5·3 + ½·log 2
    assert logs["loss"] == pytest.approx(1.0 + 0.375 + 0.5 * math.log(2.0), rel=1e-6)
    assert logs["weight/a"] == pytest.approx(0.5) and logs["weight/b"] == pytest.approx(0.25)
    # ∂/∂L_t = ½·e^(−s_t)·λ_t ;  ∂/∂s_t = −½·e^(−s_t)·λ_t·L_t + ½
    assert torch.allclose(losses.grad, torch.tensor([0.5, 0.125]))
    assert torch.allclose(uw.log_variances.grad, torch.tensor([-0.5, -0.375 + 0.5]))


def test_log_variances_start_at_zero_and_are_trained_by_the_trainer_optimizer() -> None:
    uw = UW(("seg", "cls", "clin"))
    assert torch.equal(uw.log_variances.detach(), torch.zeros(3))
    trainable = [p for p in uw.parameters() if p.requires_grad]  # what the trainer adds to AdamW
    assert len(trainable) == 1 and trainable[0] is uw.log_variances


def test_matches_libmtl_uw() -> None:
    """LibMTL: Σ L_t/(2·e^(s_t)) + s_t/2 with s initialised to −0.5 and no λ_t; same gradients."""
    libmtl_uw = libmtl_weighting("UW")()
    libmtl_uw.task_num, libmtl_uw.device = 3, torch.device("cpu")
    libmtl_uw.init_param()
    values = [0.7, 2.5, 0.01]
    ref_losses = torch.tensor(values, requires_grad=True)
    ref_weights = libmtl_uw.backward(ref_losses)

    ours = UW(("a", "b", "c"), UWParams(init_log_variance=-0.5))
    inputs, losses = leaf_inputs(values, [1.0, 1.0, 1.0])
    logs = ours.backward(inputs)
    assert [logs[f"weight/{t}"] for t in "abc"] == pytest.approx(list(ref_weights), rel=1e-6)
    assert torch.allclose(losses.grad, ref_losses.grad)
    assert torch.allclose(ours.log_variances.grad, libmtl_uw.loss_scale.grad)


def test_state_dict_round_trip_reproduces_the_next_step() -> None:
    torch.manual_seed(0)
    model = TinyMTL()
    uw = UW(("a", "b"))
    for step in range(3):
        uw.backward(model.inputs(step, seed=step))
        sgd_step([*model.parameters(), uw.log_variances], lr=0.1)
    fresh = UW(("a", "b"))
    fresh.load_state_dict(uw.state_dict())
    results = []
    for method in (uw, fresh):
        model.zero_grad()
        method.zero_grad()
        logs = method.backward(model.inputs(3, seed=3))
        results.append((logs, method.log_variances.grad.clone(), model.shared.weight.grad.clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2], results[1][2])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_hyper_parameters_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="init_log_variance"):
        UW(("a", "b"), UWParams(init_log_variance=bad))


def test_search_space_is_empty() -> None:
    assert UW.search_space(object()) == {}


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(1)
    model = TinyMTL()
    uw = UW(("a", "b"))
    logs = uw.backward(model.inputs(weights={"a": 1.0, "b": 2.0}))
    assert set(logs) >= {"loss", "weight/a", "weight/b"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    for name, p in [*model.named_parameters(), ("log_variances", uw.log_variances)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_classification_tasks_use_kendalls_classification_form() -> None:
    """Kendall et al. eq. 10: a softmax classifier's term is exp(−s)·L + ½s (no ½ on the loss)."""
    uw = UW(("cls", "clin"), UWParams(classification=("cls",)))
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor([math.log(2.0), math.log(4.0)]))
    inputs, losses = leaf_inputs([3.0, 8.0], [1.0, 1.0])
    inputs.losses = {"cls": losses[0], "clin": losses[1]}
    inputs.weights = {"cls": 1.0, "clin": 1.0}
    logs = uw.backward(inputs)
    expected = 3.0 / 2 + 0.5 * math.log(2.0) + 0.5 * 8.0 / 4 + 0.5 * math.log(4.0)
    assert logs["loss"] == pytest.approx(expected, rel=1e-6)
    assert logs["weight/cls"] == pytest.approx(0.5) and logs["weight/clin"] == pytest.approx(0.125)
    assert torch.allclose(uw.log_variances.grad, torch.tensor([-1.5 + 0.5, -1.0 + 0.5]))
    # the default is the rule methods.md pins, ½·exp(−s_t)·L_t for every task, whatever its name
    assert UW(("cls", "clin")).factors().tolist() == [0.5, 0.5]
    assert UW(("cls", "clin"), UWParams(classification=())).factors().tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="Parameter `classification`"):
        UW(("cls",), UWParams(classification="cls"))  # type: ignore[arg-type]
