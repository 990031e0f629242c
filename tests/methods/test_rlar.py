"""RLAR (Eq. 4–7): value, differentiability, representation choice, precision, degenerate cases."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mtlbench.api.method import StepInputs
from mtlbench.methods.rlar import RLAR, RLARParams, rlar_penalty
from mtlbench.model import named_representations
from tests.methods.tiny_nets import TinyNet, make_batch
from tests.methods.tiny_nets import losses_of as tiny_losses

CLASS_WEIGHT = torch.tensor([1.0, 2.0, 0.5])


def losses_of(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return tiny_losses(out, batch, CLASS_WEIGHT)


def independent_eq6(losses: list[torch.Tensor], z: torch.Tensor, eps: float = 1e-8) -> float:
    """Eq. 4–6 written out literally in float64: δ_t, per-sample flattening, cosine, mean over t<t'."""
    deltas = []
    for loss in losses:
        (g,) = torch.autograd.grad(loss, z, retain_graph=True)
        g = g.double()
        deltas.append(eps * g / (g.norm() + eps))
    total = 0.0
    b = z.shape[0]
    t = len(deltas)
    for i in range(b):
        acc = 0.0
        for a, c in itertools.combinations(range(t), 2):
            fa, fc = deltas[a][i].flatten(), deltas[c][i].flatten()
            acc += abs(float(fa @ fc / (fa.norm() * fc.norm())))
        total += 2.0 / (t * (t - 1)) * acc
    return total / b


def test_penalty_equals_independent_computation() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = list(losses_of(out, batch).values())
    expected = independent_eq6(losses, feats[-1])
    got, per_pair = rlar_penalty(losses, feats[-1])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert per_pair.shape == (3,)
    assert per_pair.mean().item() == pytest.approx(expected, rel=1e-5)


def test_method_objective_is_weighted_sum_plus_lambda_penalty() -> None:
    torch.manual_seed(1)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = losses_of(out, batch)
    weights = {"seg": 1.0, "cls": 0.5, "clin": 2.0}
    penalty, _ = rlar_penalty(list(losses.values()), feats[-1])
    method = RLAR(("seg", "cls", "clin"), RLARParams(lambda_adv=0.3))
    inputs = StepInputs(losses, weights, list(net.enc.parameters()), named_representations(feats), step=0)
    logs = method.backward(inputs)
    expected_total = sum(weights[k] * losses[k].item() for k in losses) + 0.3 * penalty.item()
    assert logs["loss"] == pytest.approx(expected_total, rel=1e-6)
    assert logs["rlar_penalty"] == pytest.approx(0.3 * penalty.item(), rel=1e-6)


def test_penalty_gradient_reaches_parameters() -> None:
    """Fails if the representation gradients are taken without ``create_graph=True``."""
    torch.manual_seed(2)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    penalty, _ = rlar_penalty(list(losses_of(out, batch).values()), feats[-1])
    assert penalty.requires_grad
    head_params = [net.seg.weight, net.embed.weight, net.cls.weight]
    grads = torch.autograd.grad(penalty, [*head_params, net.enc[0].weight], allow_unused=True)
    for g in grads:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_method_backward_fills_every_parameter_and_penalty_changes_gradients() -> None:
    torch.manual_seed(3)
    batch = make_batch()
    grads = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(3)
        net = TinyNet()
        feats, out = net(batch["image"])
        inputs = StepInputs(
            losses_of(out, batch),
            {"seg": 1.0, "cls": 1.0, "clin": 1.0},
            list(net.enc.parameters()),
            named_representations(feats),
            step=0,
        )
        RLAR(("seg", "cls", "clin"), RLARParams(lambda_adv=lam)).backward(inputs)
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        grads[lam] = net.seg.weight.grad.clone()
    assert not torch.allclose(grads[0.0], grads[1.0])


@pytest.mark.parametrize("name", ["bottleneck", "last", "mid", "mean_last3"])
def test_representation_setting_selects_the_probed_tensor(name: str) -> None:
    torch.manual_seed(4)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = losses_of(out, batch)
    reps = named_representations(feats)
    expected_target = {"bottleneck": feats[2], "last": feats[1], "mid": feats[1], "mean_last3": feats}[name]
    expected, _ = rlar_penalty(list(losses.values()), expected_target)
    method = RLAR(("seg", "cls", "clin"), RLARParams(lambda_adv=1.0, representation=name))
    logs = method.backward(StepInputs(losses, {"seg": 1, "cls": 1, "clin": 1}, [], reps, step=0))
    assert logs["rlar_penalty"] == pytest.approx(expected.item(), rel=1e-6)


def test_representation_settings_give_different_penalties() -> None:
    torch.manual_seed(5)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = list(losses_of(out, batch).values())
    values = {
        k: rlar_penalty(losses, feats[i])[0].item() for k, i in (("level0", 0), ("level1", 1), ("level2", 2))
    }
    assert len({round(v, 6) for v in values.values()}) == 3


def test_mean_last3_is_the_mean_of_per_level_cosines() -> None:
    torch.manual_seed(6)
    net = TinyNet()
    batch = make_batch(b=1)
    feats, out = net(batch["image"])
    seg, cls = losses_of(out, batch)["seg"], losses_of(out, batch)["cls"]
    per_level = []
    for f in feats:
        (gs,) = torch.autograd.grad(seg, f, retain_graph=True)
        (gc,) = torch.autograd.grad(cls, f, retain_graph=True)
        per_level.append(F.cosine_similarity(gs.flatten(1), gc.flatten(1)).item())
    got, _ = rlar_penalty([seg, cls], feats)
    assert got.item() == pytest.approx(abs(sum(per_level) / 3), rel=1e-5)


def test_bf16_matches_fp32() -> None:
    """bf16 autocast forward vs fp32: penalties agree to 0.03 absolute (bf16 keeps ~3 digits)."""
    torch.manual_seed(7)
    net = TinyNet()
    batch = make_batch(b=6)
    feats, out = net(batch["image"])
    ref, _ = rlar_penalty(list(losses_of(out, batch).values()), feats[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats16, out16 = net(batch["image"])
        losses16 = losses_of(out16, batch)
    assert feats16[-1].dtype == torch.bfloat16
    got, _ = rlar_penalty(list(losses16.values()), feats16[-1])
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(ref.item(), abs=0.03)


def test_loss_scaling_does_not_change_the_penalty() -> None:
    torch.manual_seed(8)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = list(losses_of(out, batch).values())
    plain, _ = rlar_penalty(losses, feats[-1])
    scaled, _ = rlar_penalty([loss * 65536.0 for loss in losses], feats[-1])
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-5)


def test_zero_gradients_and_missing_targets_give_no_nan() -> None:
    torch.manual_seed(9)
    net = TinyNet()
    batch = make_batch()
    batch["clinical"][:2] = float("nan")  # two samples without a clinical target
    feats, out = net(batch["image"])
    losses = losses_of(out, batch)
    zero_task = (out["logits"] * 0.0).sum()  # reaches z but with an all-zero gradient
    constant = torch.tensor(1.0)  # does not reach z at all
    for extra in (zero_task, constant):
        penalty, per_pair = rlar_penalty([losses["seg"], losses["clin"], extra], feats[-1])
        assert torch.isfinite(penalty) and torch.isfinite(per_pair).all()
        (g,) = torch.autograd.grad(penalty, net.seg.weight, retain_graph=True)
        assert torch.isfinite(g).all()
    # only the seg–clin pair of the samples that have a clinical target counts
    (gs,) = torch.autograd.grad(losses["seg"], feats[-1], retain_graph=True)
    (gc,) = torch.autograd.grad(losses["clin"], feats[-1], retain_graph=True)
    cos = F.cosine_similarity(gs.flatten(1)[2:], gc.flatten(1)[2:]).abs().mean()
    penalty, _ = rlar_penalty([losses["seg"], losses["clin"]], feats[-1])
    assert penalty.item() == pytest.approx(cos.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (RLARParams(lambda_adv=-0.1), "`lambda_adv = -0.1`"),
        (RLARParams(representation="neck"), "`representation = 'neck'`"),  # type: ignore[arg-type]
    ],
)
def test_bad_hyperparameters_are_rejected(params: RLARParams, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RLAR(("seg", "cls"), params)
