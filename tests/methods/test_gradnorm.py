"""GradNorm (Chen 2018): two steps by hand, LibMTL parity, layer choice, renormalisation, loss scaling,
state round trip, validation, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import mtlbench.methods.gradnorm as gradnorm_module
from mtlbench.api.method import StepInputs
from mtlbench.methods.gradnorm import GradNorm, GradNormParams, gradnorm_loss, last_shared_layer
from tests.methods.test_uw import TinyMTL, libmtl_weighting, sgd_step

A = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # ‖A‖ = 2
B = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # ‖B‖ = 1


def linear_inputs(w: nn.Parameter, weights: dict[str, float], **kw: object) -> StepInputs:
    """L_a = 1 + ⟨W, A⟩, L_b = 1 + ⟨W, B⟩: ‖∇_W L_a‖ = 2, ‖∇_W L_b‖ = 1 whatever W is."""
    losses = {"a": 1 + (w * A).sum(), "b": 1 + (w * B).sum()}
    return StepInputs(losses, weights, [w], {}, step=0, **kw)  # type: ignore[arg-type]


def test_two_steps_by_hand() -> None:
    w_layer = nn.Parameter(torch.zeros(2, 2))
    gn = GradNorm(("a", "b"))  # α = 1.5, Adam lr = 0.025
    logs = gn.backward(linear_inputs(w_layer, {"a": 1.0, "b": 0.5}))
    # step 1: L(0) = L = (1, 1), r = 1; G = (2, 1), target 1.5 each; L_grad = 1; ∂/∂w = (2, −1)
    assert logs["weight/a"] == 1.0 and logs["weight/b"] == 1.0
    assert logs["gradnorm/loss"] == pytest.approx(1.0)
    assert (logs["gradnorm/grad_norm/a"], logs["gradnorm/grad_norm/b"]) == pytest.approx((2.0, 1.0))
    assert torch.allclose(w_layer.grad, A + 0.5 * B)  # the model gets Σ w_t λ_t ∇L_t
    # Adam's first step moves each weight by lr against the gradient's sign; the sum stays 2
    assert gn.task_weights.tolist() == pytest.approx([0.975, 1.025], abs=1e-6)
    assert torch.equal(gn.initial_losses, torch.ones(2))

    with torch.no_grad():  # L = (0.5, 1.5): L̃ = (0.5, 1.5), r = (0.5, 1.5)
        w_layer.copy_(torch.tensor([[-0.25, 0.5], [0.0, 0.0]]))
    w_layer.grad = None
    logs = gn.backward(linear_inputs(w_layer, {"a": 1.0, "b": 0.5}))
    g = [0.975 * 2, 1.025 * 1]
    target = [(g[0] + g[1]) / 2 * r**1.5 for r in (0.5, 1.5)]
    assert logs["gradnorm/loss"] == pytest.approx(abs(g[0] - target[0]) + abs(g[1] - target[1]), rel=1e-5)
    assert logs["gradnorm/loss"] == pytest.approx(3.131805, rel=1e-5)
    assert logs["weight/a"] == pytest.approx(0.975, rel=1e-6)
    assert torch.allclose(w_layer.grad, 0.975 * A + 0.5 * 1.025 * B)
    assert gn.task_weights.tolist() == pytest.approx([0.95, 1.05], abs=1e-6)  # same gradient signs


def test_gradnorm_loss_on_hand_values() -> None:
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    loss = gradnorm_loss(w, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.5]), 1.5)
    # L̃ = (0.5, 2), r = (0.4, 1.6), target = 1.5·r^1.5
    expected = abs(2 - 1.5 * 0.4**1.5) + abs(1 - 1.5 * 1.6**1.5)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.tolist() == pytest.approx([2.0, -1.0])  # the target is a constant


def test_matches_libmtl_gradnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same model gradient and the same L_grad gradient once LibMTL's parametrisation is undone.

    LibMTL's weights are T·softmax(v) and its L(0) the first epoch's mean loss: with v = log w
    (Σ w = T) and L(0) given to both, ∂L_grad/∂v must equal J_(T·softmax)(v)ᵀ ∂L_grad/∂w, and with
    the layer being the only shared parameter both use the same G_t.
    """
    g = torch.Generator().manual_seed(0)
    w_layer = nn.Parameter(torch.randn(3, 4, generator=g))
    xs = [torch.randn(4, 5, generator=g) for _ in range(3)]
    weights = torch.tensor([0.6, 1.1, 1.3])
    initial = [2.0, 0.7, 1.5]

    def losses() -> list[torch.Tensor]:
        return [((w_layer @ x) ** 2).mean() * (k + 1) for k, x in enumerate(xs)]

    ref = libmtl_weighting("GradNorm")()
    ref.task_num, ref.device, ref.epoch, ref.rep_grad = 3, torch.device("cpu"), 1, False
    ref.init_param()
    ref.get_share_params = lambda: [w_layer]
    ref.zero_grad_share_params = lambda: w_layer.grad.zero_() if w_layer.grad is not None else None
    ref.train_loss_buffer = np.array(initial)[:, None]
    with torch.no_grad():
        ref.loss_scale.copy_(weights.log())
    ref_weights = ref.backward(torch.stack(losses()), alpha=1.5)
    ref_layer_grad = w_layer.grad.clone()
    ref_v_grad = ref.loss_scale.grad.clone()

    captured: list[torch.Tensor] = []
    real_update = gradnorm_module.adam_update
    monkeypatch.setattr(
        gradnorm_module,
        "adam_update",
        lambda p, grad, *a, **k: (captured.append(grad), real_update(p, grad, *a, **k)),
    )
    ours = GradNorm(("a", "b", "c"))
    ours.task_weights.copy_(weights)
    ours.initial_losses.copy_(torch.tensor(initial))
    ours.initialised.fill_(True)
    w_layer.grad = None
    logs = ours.backward(
        StepInputs(dict(zip("abc", losses())), dict.fromkeys("abc", 1.0), [w_layer], {}, step=0)
    )
    assert [logs[f"weight/{t}"] for t in "abc"] == pytest.approx(list(ref_weights), rel=1e-6)
    assert torch.allclose(w_layer.grad, ref_layer_grad, rtol=1e-5, atol=1e-6)
    v = ref.loss_scale.detach().clone().requires_grad_(True)
    (expected_v_grad,) = torch.autograd.grad(3 * torch.softmax(v, 0), v, grad_outputs=captured[0])
    assert torch.allclose(ref_v_grad, expected_v_grad, rtol=1e-5, atol=1e-7)


def test_last_shared_layer_is_the_last_matrix_or_kernel() -> None:
    conv, lin, norm = nn.Conv2d(1, 2, 3), nn.Linear(2, 2), nn.LayerNorm(2)
    params = [*conv.parameters(), *lin.parameters(), *norm.parameters()]
    assert last_shared_layer(params) is lin.weight
    with pytest.raises(ValueError, match="ndim >= 2"):
        last_shared_layer([*norm.parameters()])


def test_weights_stay_positive_and_sum_to_the_task_count() -> None:
    torch.manual_seed(0)
    model = TinyMTL()
    gn = GradNorm(("a", "b"), GradNormParams(lr=5.0, min_weight=1e-3))  # huge steps force the clamp
    for step in range(6):
        model.zero_grad()
        gn.backward(model.inputs(step, seed=step))
        assert float(gn.task_weights.sum()) == pytest.approx(2.0, rel=1e-6)
        assert (gn.task_weights > 0).all()


def test_fp16_loss_scale_changes_neither_the_weights_nor_the_unscaled_gradient() -> None:
    results = []
    for factor in (1.0, 1024.0):
        w_layer = nn.Parameter(torch.zeros(2, 2))
        gn = GradNorm(("a", "b"))
        inputs = linear_inputs(
            w_layer, {"a": 1.0, "b": 1.0}, scale=lambda x, f=factor: x * f, loss_scale=factor
        )
        logs = gn.backward(inputs)
        results.append((logs, gn.task_weights.clone(), w_layer.grad / factor))
    assert results[0][0] == pytest.approx(results[1][0])
    assert torch.allclose(results[0][1], results[1][1]) and torch.allclose(results[0][2], results[1][2])


def test_state_dict_round_trip_reproduces_the_next_step() -> None:
    torch.manual_seed(0)
    model = TinyMTL()
    gn = GradNorm(("a", "b"))
    for step in range(3):
        gn.backward(model.inputs(step, seed=step))
        sgd_step(model.parameters(), lr=0.3)
    fresh = GradNorm(("a", "b"))
    fresh.load_state_dict(gn.state_dict())
    assert bool(fresh.initialised) and int(fresh.adam_step) == 3
    results = []
    for method in (gn, fresh):
        model.zero_grad()
        logs = method.backward(model.inputs(3, seed=3))
        results.append((logs, model.shared.weight.grad.clone(), method.state_dict()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    for key, value in results[0][2].items():
        assert torch.equal(value, results[1][2][key]), key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", -0.5),
        ("alpha", float("nan")),
        ("lr", 0.0),
        ("lr", -1.0),
        ("min_weight", 1.0),
        ("min_weight", -0.1),
    ],
)
def test_bad_hyper_parameters_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"`{field} = "):
        GradNorm(("a", "b"), GradNormParams(**{field: value}))


def test_weights_are_not_trained_by_the_trainer_optimizer() -> None:
    gn = GradNorm(("a", "b"))
    assert [p for p in gn.parameters() if p.requires_grad] == []
    assert {"task_weights", "initial_losses", "initialised", "exp_avg", "exp_avg_sq"} <= set(gn.state_dict())


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(1)
    model = TinyMTL()
    logs = GradNorm(("a", "b")).backward(model.inputs(weights={"a": 1.0, "b": 0.3}))
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
