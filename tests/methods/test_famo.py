"""FAMO (Liu 2023): one step by hand, two steps with a known loss decrease against torch's Adam,
state round trip, validation, end to end, and the trainer's after-step hook."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtlbench.config import resolve_config
from mtlbench.methods.famo import FAMO, FAMOParams, adam_update, famo_objective, softmax_vjp
from mtlbench.runner import prepare_run, run_experiment
from tests.methods.test_uw import TinyMTL, leaf_inputs
from tests.tiny import tiny_run_overrides


def test_one_step_by_hand() -> None:
    famo = FAMO(("a", "b"))
    famo.logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # z = (1/4, 3/4)
    inputs, losses = leaf_inputs([1.0, 4.0], [1.0, 1.0])
    logs = famo.backward(inputs)
    c = 0.25 / 1.0 + 0.75 / 4.0  # 0.4375
    assert logs["weight/a"] == pytest.approx(0.25) and logs["weight/b"] == pytest.approx(0.75)
    assert logs["loss"] == pytest.approx(0.75 * math.log(4.0) / c, rel=1e-6)
    # ∂/∂L_t = z_t / (c·D_t): (4/7, 3/7), which sum to 1
    assert torch.allclose(losses.grad, torch.tensor([4 / 7, 3 / 7]), rtol=1e-6)


def reference_logit_update(
    w: torch.nn.Parameter, opt: torch.optim.Adam, before: list[float], after: list[float]
) -> None:
    """The update written independently: δ = log D(before) − log D(after), w.grad = J_softmaxᵀ δ via
    autograd, then torch.optim.Adam(lr=0.025, weight_decay=0.01) (the official code's defaults)."""
    delta = torch.log(torch.tensor(before) + 1e-8) - torch.log(torch.tensor(after) + 1e-8)
    (grad,) = torch.autograd.grad(torch.softmax(w, dim=0), w, grad_outputs=delta)
    opt.zero_grad()
    w.grad = grad
    opt.step()


def test_two_steps_with_known_loss_decrease_match_torch_adam() -> None:
    steps = [([1.0, 4.0], [0.5, 3.6]), ([0.5, 3.6], [0.45, 2.0])]
    famo = FAMO(("a", "b"))
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([w], lr=0.025, weight_decay=0.01)
    for k, (before, after) in enumerate(steps):
        famo.backward(leaf_inputs(before, [1.0, 1.0])[0])
        logs = famo.after_step(lambda after=after: {"a": torch.tensor(after[0]), "b": torch.tensor(after[1])})
        reference_logit_update(w, opt, before, after)
        assert torch.allclose(famo.logits, w.detach(), atol=1e-7, rtol=1e-6), k
        assert logs["famo/log_loss_decrease/a"] == pytest.approx(math.log(before[0] / after[0]), rel=1e-5)
    # step 1: task a halved its loss, b fell 10 %: a's weight goes down (Adam's first step ≈ ±lr)
    first = FAMO(("a", "b"))
    first.backward(leaf_inputs([1.0, 4.0], [1.0, 1.0])[0])
    first.after_step(lambda: {"a": torch.tensor(0.5), "b": torch.tensor(3.6)})
    assert first.logits.tolist() == pytest.approx([-0.025, 0.025], rel=1e-4)
    assert int(first.adam_step) == 1 and int(famo.adam_step) == 2


def test_adam_update_equals_torch_adam_over_many_steps() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, generator=g))
    ours = w.detach().clone()
    m, v, step = torch.zeros(4), torch.zeros(4), torch.zeros((), dtype=torch.long)
    opt = torch.optim.Adam([w], lr=0.05, weight_decay=1e-2)
    for _ in range(20):
        grad = torch.randn(4, generator=g)
        w.grad = grad.clone()
        opt.step()
        adam_update(ours, grad, m, v, step, lr=0.05, weight_decay=1e-2)
    assert torch.allclose(ours, w.detach(), atol=1e-6)


def test_softmax_vjp_equals_autograd() -> None:
    w = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    delta = torch.tensor([0.1, -0.4, 0.25])
    (expected,) = torch.autograd.grad(torch.softmax(w, 0), w, grad_outputs=delta)
    assert torch.allclose(softmax_vjp(w.detach(), delta), expected, atol=1e-7)


def test_effective_weights_sum_to_one_and_objective_value() -> None:
    losses = torch.tensor([0.2, 1.5, 7.0], requires_grad=True)
    logits = torch.tensor([0.5, -0.2, 0.1])
    obj = famo_objective(losses, logits)
    (grad,) = torch.autograd.grad(obj, losses)
    z = torch.softmax(logits, 0)
    c = (z / (losses.detach() + 1e-8)).sum()
    assert float(grad.sum()) == pytest.approx(1.0, rel=1e-6)
    expected = (z / c * torch.log(losses.detach() + 1e-8)).sum()
    assert float(obj.detach()) == pytest.approx(float(expected), rel=1e-6)


def test_state_dict_round_trip_reproduces_the_next_step() -> None:
    torch.manual_seed(0)
    model = TinyMTL()
    famo = FAMO(("a", "b"))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        opt.zero_grad()
        famo.backward(model.inputs(step, seed=step))
        opt.step()
        famo.after_step(lambda step=step: model.losses(step))
    fresh = FAMO(("a", "b"))
    fresh.load_state_dict(famo.state_dict())
    assert int(fresh.adam_step) == 3 and fresh.exp_avg_sq.abs().sum() > 0
    after = {"a": torch.tensor(0.3), "b": torch.tensor(0.9)}
    results = []
    for method in (famo, fresh):
        model.zero_grad()
        logs = method.backward(model.inputs(3, seed=3))
        logs.update(method.after_step(lambda: after))
        results.append((logs, model.shared.weight.grad.clone(), method.state_dict()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    for key, value in results[0][2].items():
        assert torch.equal(value, results[1][2][key]), key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", -0.1),
        ("lr", float("nan")),
        ("weight_decay", -1e-3),
        ("weight_decay", float("inf")),
        ("max_norm", -1.0),
    ],
)
def test_bad_hyper_parameters_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"`{field} = "):
        FAMO(("a", "b"), FAMOParams(**{field: value}))


def test_negative_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        FAMO(("a", "b")).backward(leaf_inputs([1.0, -0.5], [1.0, 1.0])[0])


def test_logits_are_not_trained_by_the_trainer_optimizer() -> None:
    famo = FAMO(("a", "b"))
    assert [p for p in famo.parameters() if p.requires_grad] == []
    assert famo.needs.extra_forward
    assert {"logits", "exp_avg", "exp_avg_sq", "adam_step"} <= set(famo.state_dict())


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(1)
    model = TinyMTL()
    famo = FAMO(("a", "b"))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    logs = famo.backward(model.inputs())
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt.step()
    with torch.no_grad():
        logs = famo.after_step(lambda: model.losses(0))
    assert all(math.isfinite(v) for v in logs.values())
    assert not torch.equal(famo.logits, torch.zeros(2))


def test_trainer_calls_after_step_every_step(tmp_path: Path) -> None:
    cfg = resolve_config(
        tiny_run_overrides(tmp_path, **{"train.epochs": 2, "train.steps_per_epoch": 3}), method="famo"
    )
    prepared = prepare_run(cfg)
    run_experiment(cfg, prepared=prepared)
    famo = prepared.method
    assert int(famo.adam_step) == 6 and not bool(famo.pending)
    assert torch.isfinite(famo.logits).all() and not torch.equal(famo.logits, torch.zeros(3))


def test_official_defaults_and_shared_gradient_clipping() -> None:
    """Cranial-XIX/FAMO famo.py: γ = 0.01, w_lr = 0.025, clip_grad_norm_(shared, max_norm = 1.0)."""
    assert FAMOParams() == FAMOParams(lr=0.025, weight_decay=0.01, max_norm=1.0)
    from tests.methods.grad_properties import tiny_step

    norms = {}
    for max_norm in (0.0, 1e-3):
        model, inputs = tiny_step(("a", "b"))
        logs = FAMO(("a", "b"), FAMOParams(max_norm=max_norm)).backward(inputs)
        shared = torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()])
        heads = torch.cat([p.grad.reshape(-1) for p in model.heads.parameters()])
        norms[max_norm] = (float(shared.norm()), heads, logs)
    unclipped, heads0, _ = norms[0.0]
    clipped, heads1, logs = norms[1e-3]
    assert unclipped > 1e-3 and clipped == pytest.approx(1e-3, rel=1e-5)
    assert logs["famo/shared_grad_norm"] == pytest.approx(unclipped, rel=1e-5)
    assert torch.equal(heads0, heads1)  # heads are not clipped
