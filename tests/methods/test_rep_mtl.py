"""Rep-MTL: TSR and CSA against literal computations, differentiability, precision, degenerate cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlbench.api.method import StepInputs
from mtlbench.methods import rep_mtl
from mtlbench.methods.rep_mtl import (
    RepMTL,
    RepMTLParams,
    csa_infonce,
    gram_frobenius_norm,
    rep_mtl_penalties,
    tsr_entropy,
)
from mtlbench.model import named_representations
from tests.methods.tiny_nets import TinyNet as RepTinyNet
from tests.methods.tiny_nets import losses_of
from tests.methods.tiny_nets import make_batch as tiny_batch

TASKS = ("seg", "cls", "clin")


def TinyNet() -> RepTinyNet:
    """12 px input → levels of 3, 5 and 4 channels (12², 6², 3²); the classifier flattens the 3² level."""
    return RepTinyNet(widths=(3, 5, 4), size=12, embed="flatten", tanh_h=True)


def make_batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    return tiny_batch(b, size=12, seed=seed)


# -- literal formulas (float64, C×C matrices formed) ----------------------------------------------
def literal_tsr(sal: list[torch.Tensor]) -> float:
    """sal: T tensors (B, C, H, W). Ŝ = channel mean, P = |Ŝ|/Σ|Ŝ|, mean over locations of −Σ P log P."""
    s_hat = torch.stack([s.double().mean(1) for s in sal])  # (T, B, H, W)
    p = s_hat.abs() / s_hat.abs().sum(0, keepdim=True)
    return float((-(p * p.log()).sum(0)).mean())


def literal_csa(sal: list[torch.Tensor], tau: float) -> float:
    """InfoNCE with M_{t,b} = S Sᵀ, Â_b = A Aᵀ, cosine of the flattened C×C matrices."""
    mats = [s.double().flatten(2) for s in sal]  # (B, C, N)
    b_count = mats[0].shape[0]

    def cos(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(F.cosine_similarity(x.flatten(), y.flatten(), dim=0))

    anchors = []
    for b in range(b_count):
        a = torch.stack([m[b].mean(1) for m in mats], dim=1)  # (C, T)
        anchors.append(a @ a.T)
    terms = []
    for b in range(b_count):
        negatives = [math.exp(cos(anchors[b], anchors[k]) / tau) for k in range(b_count) if k != b]
        for m in mats:
            pos = math.exp(cos(anchors[b], m[b] @ m[b].T) / tau)
            terms.append(-math.log(pos / (pos + sum(negatives))))
    return sum(terms) / len(terms)


def saliency_of(losses: list[torch.Tensor], z: torch.Tensor) -> list[torch.Tensor]:
    return [torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses]


def stacked(sal: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([s.flatten(2) for s in sal]).float()


# -- the pure functions ----------------------------------------------------------------------------
def test_tsr_and_csa_equal_literal_formulas_on_random_saliency() -> None:
    g = torch.Generator().manual_seed(0)
    sal = [torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    assert tsr_entropy(stacked(sal)).item() == pytest.approx(literal_tsr(sal), rel=1e-5)
    for tau in (0.1, 0.5):
        got, _ = csa_infonce(stacked(sal), tau)
        assert got.item() == pytest.approx(literal_csa(sal, tau), rel=1e-5)


def test_penalties_on_a_network_equal_literal_formulas() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    assert feats[-1].shape == (3, 4, 3, 3)
    losses = list(losses_of(out, batch).values())
    sal = saliency_of(losses, feats[-1])
    tsr, csa, _ = rep_mtl_penalties(losses, feats[-1], temperature=0.1)
    assert tsr.item() == pytest.approx(literal_tsr(sal), rel=1e-5)
    assert csa.item() == pytest.approx(literal_csa(sal, 0.1), rel=1e-5)


@pytest.mark.parametrize(("c", "n"), [(7, 3), (3, 7), (5, 5)])
def test_gram_frobenius_norm_value_and_gradient(c: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(c * 10 + n)
    s = torch.randn(2, 3, c, n, generator=g, dtype=torch.float64, requires_grad=True)
    expected = torch.linalg.matrix_norm(s @ s.transpose(-1, -2))
    assert torch.allclose(gram_frobenius_norm(s), expected, rtol=1e-12)
    assert torch.autograd.gradcheck(gram_frobenius_norm, (s,))
    monkeypatch.setattr(rep_mtl, "GRAM_BLOCK_ELEMENTS", 6)  # force blocks of one or a few rows
    assert torch.allclose(gram_frobenius_norm(s), expected, rtol=1e-12)
    assert torch.autograd.gradcheck(gram_frobenius_norm, (s,))


def test_penalty_gradients_reach_the_heads() -> None:
    """Fails if the saliency is taken without ``create_graph=True`` (the penalties become constants)."""
    torch.manual_seed(1)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    tsr, csa, _ = rep_mtl_penalties(list(losses_of(out, batch).values()), feats[-1])
    params = [net.seg.weight, net.embed.weight, net.cls.weight, net.enc[0].weight]
    for penalty in (tsr, csa):
        assert penalty.requires_grad
        grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
        for p, grad in zip(params, grads):
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, p.shape


def test_zero_gradient_task_and_missing_targets_give_no_nan_and_do_not_count() -> None:
    torch.manual_seed(2)
    net = TinyNet()
    batch = make_batch(b=4)
    batch["clinical"][:2] = float("nan")  # two samples without a clinical target
    feats, out = net(batch["image"])
    losses = losses_of(out, batch)
    two = rep_mtl_penalties([losses["seg"], losses["cls"]], feats[-1])
    zero_task = (out["logits"] * 0.0).sum()  # reaches z with an all-zero gradient
    constant = torch.tensor(1.0)  # does not reach z at all
    for extra in (zero_task, constant):
        tsr, csa, _ = rep_mtl_penalties([losses["seg"], losses["cls"], extra], feats[-1])
        # an all-zero saliency has P = 0 everywhere and no positive: both terms are unchanged
        assert tsr.item() == pytest.approx(two[0].item(), rel=1e-5)
        assert csa.item() == pytest.approx(two[1].item(), rel=1e-5)
        grads = torch.autograd.grad(tsr + csa, [net.seg.weight, net.enc[0].weight], retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads)
    tsr, csa, _ = rep_mtl_penalties(list(losses.values()), feats[-1])
    assert torch.isfinite(tsr) and torch.isfinite(csa)
    grads = torch.autograd.grad(tsr + csa, [net.seg.weight, net.cls.weight], retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    # all saliencies zero (every sample, every task): finite zeros
    zeros = rep_mtl_penalties([zero_task, zero_task * 2.0], feats[-1])
    assert all(torch.isfinite(v) for v in zeros) and zeros[0].item() == 0.0 and zeros[1].item() == 0.0


def test_sample_without_any_saliency_is_left_out() -> None:
    """Sample 0 reaches no loss: no TSR locations, no anchor, no negative — as if it were not there."""
    torch.manual_seed(10)
    net = TinyNet()
    batch = make_batch(b=4)
    rest = {k: v[1:] for k, v in batch.items()}
    feats, out = net(batch["image"])
    losses = losses_of({k: v[1:] for k, v in out.items()}, rest)
    tsr, csa, _ = rep_mtl_penalties([losses[t] for t in TASKS], feats[-1])
    grads = torch.autograd.grad(tsr + csa, [net.seg.weight, net.enc[0].weight])
    assert all(torch.isfinite(g).all() for g in grads)
    feats3, out3 = net(rest["image"])
    losses3 = losses_of(out3, rest)
    tsr3, csa3, _ = rep_mtl_penalties([losses3[t] for t in TASKS], feats3[-1])
    assert tsr.item() == pytest.approx(tsr3.item(), rel=1e-5)
    assert csa.item() == pytest.approx(csa3.item(), rel=1e-5)


def test_single_sample_has_no_negatives_and_zero_csa() -> None:
    torch.manual_seed(3)
    net = TinyNet()
    batch = make_batch(b=1)
    feats, out = net(batch["image"])
    tsr, csa, _ = rep_mtl_penalties(list(losses_of(out, batch).values()), feats[-1])
    assert torch.isfinite(tsr) and csa.item() == pytest.approx(0.0, abs=1e-7)


def test_bf16_matches_fp32() -> None:
    """bf16 autocast forward vs fp32: TSR (0…log 3) and CSA agree to 0.05 absolute (bf16 keeps ~3 digits)."""
    torch.manual_seed(4)
    net = TinyNet()
    batch = make_batch(b=6)
    feats, out = net(batch["image"])
    ref = rep_mtl_penalties(list(losses_of(out, batch).values()), feats[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats16, out16 = net(batch["image"])
        losses16 = losses_of(out16, batch)
    assert feats16[-1].dtype == torch.bfloat16
    got = rep_mtl_penalties(list(losses16.values()), feats16[-1])
    for r, v in zip(ref[:2], got[:2]):
        assert torch.isfinite(v) and v.dtype == torch.float32
        assert v.item() == pytest.approx(r.item(), abs=0.05)


def test_common_loss_scale_does_not_change_the_penalties() -> None:
    torch.manual_seed(5)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = list(losses_of(out, batch).values())
    plain = rep_mtl_penalties(losses, feats[-1])
    scaled = rep_mtl_penalties([loss * 65536.0 for loss in losses], feats[-1])
    tiny = rep_mtl_penalties([loss * 1e-30 for loss in losses], feats[-1])
    for a, b, c in zip(plain, scaled, tiny):
        assert b.item() == pytest.approx(a.item(), rel=1e-5)
        assert c.item() == pytest.approx(a.item(), rel=1e-4)


# -- the method ------------------------------------------------------------------------------------
def run_method(params: RepMTLParams, seed: int = 6, scale: float = 1.0) -> tuple[TinyNet, dict[str, float]]:
    torch.manual_seed(seed)
    net = TinyNet()
    batch = make_batch(b=4)
    feats, out = net(batch["image"])
    inputs = StepInputs(
        losses_of(out, batch),
        {"seg": 1.0, "cls": 0.5, "clin": 2.0},
        list(net.enc.parameters()),
        named_representations(feats),
        step=0,
        scale=lambda loss: loss * scale,
        head_parameters=[*net.seg.parameters(), *net.embed.parameters(), *net.cls.parameters()],
        loss_scale=scale,
    )
    return net, RepMTL(TASKS, params).backward(inputs)


def test_backward_fills_every_parameter_and_the_penalties_change_gradients() -> None:
    grads = {}
    for lam in (0.0, 1.0):
        net, logs = run_method(RepMTLParams(lambda_tsr=lam, lambda_csa=lam))
        assert set(logs) >= {"loss", "rep_mtl/tsr", "rep_mtl/csa"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        grads[lam] = [p.grad.clone() for p in net.parameters()]
    assert not torch.allclose(grads[0.0][0], grads[1.0][0])  # the encoder's first conv
    assert not torch.allclose(grads[0.0][-2], grads[1.0][-2])  # the classifier head


@pytest.mark.parametrize("log_losses", [False, True])
def test_logged_objective_is_task_terms_plus_weighted_penalties(log_losses: bool) -> None:
    params = RepMTLParams(lambda_tsr=0.7, lambda_csa=1.3, log_losses=log_losses)
    torch.manual_seed(7)
    net = TinyNet()
    batch = make_batch(b=4)
    feats, out = net(batch["image"])
    losses = losses_of(out, batch)
    terms = {k: (torch.log(v + params.eps) if log_losses else v) for k, v in losses.items()}
    tsr, csa, _ = rep_mtl_penalties([terms[t] for t in TASKS], feats[-1])
    _, logs = run_method(params, seed=7)
    weights = {"seg": 1.0, "cls": 0.5, "clin": 2.0}
    expected = sum(weights[t] * terms[t].item() for t in TASKS) + 0.7 * tsr.item() + 1.3 * csa.item()
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["rep_mtl/tsr"] == pytest.approx(tsr.item(), rel=1e-5)
    assert logs["rep_mtl/csa"] == pytest.approx(csa.item(), rel=1e-5)


def test_fp16_loss_scale_scales_gradients_only() -> None:
    net1, logs1 = run_method(RepMTLParams(), seed=8)
    net2, logs2 = run_method(RepMTLParams(), seed=8, scale=1024.0)
    assert logs2["loss"] == pytest.approx(logs1["loss"], rel=1e-6)
    for p1, p2 in zip(net1.parameters(), net2.parameters()):
        assert torch.allclose(p2.grad / 1024.0, p1.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["bottleneck", "last", "mid"])
def test_representation_setting_selects_the_probed_tensor(name: str) -> None:
    torch.manual_seed(9)
    net = TinyNet()
    batch = make_batch()
    feats, out = net(batch["image"])
    losses = losses_of(out, batch)
    target = {"bottleneck": feats[2], "last": feats[1], "mid": feats[1]}[name]
    tsr, csa, _ = rep_mtl_penalties([losses[t] for t in TASKS], target)
    logs = RepMTL(TASKS, RepMTLParams(representation=name)).backward(
        StepInputs(losses, dict.fromkeys(TASKS, 1.0), [], named_representations(feats), step=0)
    )
    assert logs["rep_mtl/tsr"] == pytest.approx(tsr.item(), rel=1e-6)
    assert logs["rep_mtl/csa"] == pytest.approx(csa.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (RepMTLParams(lambda_tsr=-0.1), "Parameter `lambda_tsr` should be >= 0. Found `lambda_tsr = -0.1`."),
        (RepMTLParams(lambda_csa=-2.0), "Parameter `lambda_csa` should be >= 0. Found `lambda_csa = -2.0`."),
        (RepMTLParams(temperature=0.0), "Parameter `temperature` should be > 0. Found `temperature = 0.0`."),
        (RepMTLParams(temperature=float("nan")), "Found `temperature = nan`."),
        (RepMTLParams(eps=0.0), "Parameter `eps` should be > 0. Found `eps = 0.0`."),
        (RepMTLParams(representation="mean_last3"), "Found `representation = 'mean_last3'`."),  # type: ignore[arg-type]
    ],
)
def test_bad_hyperparameters_are_rejected(params: RepMTLParams, message: str) -> None:
    with pytest.raises(ValueError) as info:
        RepMTL(TASKS, params)
    assert message in str(info.value)


def test_one_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least two tasks"):
        RepMTL(("seg",))


def test_search_space_suggests_the_stable_range() -> None:
    calls = {}

    class FakeTrial:
        def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
            calls[name] = (low, high, log)
            return low

    space = RepMTL.search_space(FakeTrial())
    assert calls == {
        "lambda_tsr": (0.7, 1.5, False),
        "lambda_csa": (0.7, 1.5, False),
        "temperature": (0.03, 1.0, True),
    }
    RepMTL(TASKS, RepMTLParams(**space))  # the suggestions form valid parameters
