"""MGDA and MGDA-UB: golden values, min-norm optimality, normalisations, end-to-end, validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from mtlbench.api.method import StepInputs
from mtlbench.methods.mgda import (
    MGDA,
    MGDAUB,
    MGDAParams,
    MGDAUBParams,
    gradient_normalizers,
    mgda_combine,
    mgda_weights,
    min_norm_weights,
)
from tests.methods.grad_properties import (
    STANDARD_INPUTS,
    assert_close_relative,
    assert_end_to_end,
    assert_golden,
    assert_handles_zero_and_rank_deficient,
    assert_in_row_span,
    assert_non_conflicting,
    assert_permutation_invariant,
    assert_scaling_behaviour,
    assert_shape_and_finite,
    random_full_rank,
    tiny_step,
)


def fn(grads: Tensor) -> Tensor:
    return mgda_combine(grads)


def test_golden_two_tasks() -> None:
    # ‖γ(1,0) + (1−γ)(−1,1)‖² = (2γ−1)² + (1−γ)² is minimal at γ = 0.6: d = (0.2, 0.4).
    assert_golden(fn, [[1.0, 0.0], [-1.0, 1.0]], [0.2, 0.4])
    w = min_norm_weights(torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([0.6, 0.4], dtype=torch.float64))


def test_golden_vertex_and_three_tasks() -> None:
    # g2 is a shortest vector of the hull (⟨g1, g2⟩ ≥ ‖g2‖²): w = (0, 1) exactly (LibMTL stops at 0.999).
    assert_golden(fn, [[2.0, 1.0], [0.0, 1.0]], [0.0, 1.0])
    # Three orthonormal-ish gradients e1, e2, e3: the min-norm point is their mean.
    assert_golden(fn, torch.eye(3), [1 / 3, 1 / 3, 1 / 3], rtol=1e-4)


def test_properties() -> None:
    assert_shape_and_finite(fn)
    assert_permutation_invariant(fn, rtol=1e-4)
    assert_scaling_behaviour(fn)
    assert_handles_zero_and_rank_deficient(fn)
    assert_in_row_span(fn)
    assert_non_conflicting(fn)


def test_weights_satisfy_min_norm_optimality() -> None:
    # KKT on the simplex: (Mw)_t >= wᵀMw for every t, with equality on the support of w.
    for seed, (t, p) in itertools.product(range(3), [(3, 8), (5, 12), (4, 3)]):
        grads = random_full_rank(t, p, seed=seed)
        gram = grads @ grads.T
        w = min_norm_weights(gram)
        assert torch.all(w >= 0) and abs(float(w.sum()) - 1) < 1e-12
        mw, value = gram @ w, w @ gram @ w
        assert torch.all(mw >= value - 1e-3 * gram.diagonal().max()), (mw, value)
        support = w > 1e-3
        assert torch.allclose(
            mw[support], value.expand(int(support.sum())), rtol=0, atol=2e-3 * float(gram.max())
        )


def exact_min_norm(grads: Tensor) -> Tensor:
    """The min-norm point by enumerating supports (KKT system on each, keep feasible ones)."""
    gram = grads @ grads.T
    n = gram.shape[0]
    best, point = math.inf, grads[0]
    for k in range(1, n + 1):
        for support in map(list, itertools.combinations(range(n), k)):
            system = torch.zeros(k + 1, k + 1, dtype=gram.dtype)
            system[:k, :k] = gram[support][:, support]
            system[:k, k] = system[k, :k] = 1
            rhs = torch.zeros(k + 1, dtype=gram.dtype)
            rhs[k] = 1
            solution = torch.linalg.lstsq(system, rhs).solution[:k]
            if torch.all(solution >= -1e-12):
                w = torch.zeros(n, dtype=gram.dtype)
                w[support] = solution
                if float(w @ gram @ w) < best:
                    best, point = float(w @ gram @ w), w @ grads
    return point


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_tasks", [3, 4])
def test_frank_wolfe_reaches_the_exact_min_norm_point(seed: int, n_tasks: int) -> None:
    grads = random_full_rank(n_tasks, 8, seed=seed)
    assert_close_relative(
        fn(grads), exact_min_norm(grads), float(grads.norm(dim=1).max()), 1e-4, f"seed {seed}"
    )


def test_normalisations() -> None:
    grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        gradient_normalizers(grads, losses, "l2"), torch.tensor([3.0, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(gradient_normalizers(grads, losses, "loss"), losses)
    torch.testing.assert_close(
        gradient_normalizers(grads, losses, "loss+"), torch.tensor([6.0, 0.5], dtype=torch.float64)
    )
    # l2: unit gradients e1, e2 → w = (½, ½), applied to the raw gradients → (1.5, 0.5).
    torch.testing.assert_close(
        mgda_weights(grads, normalization="l2"), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    # none: min ‖(3γ, 1−γ)‖ → γ = 1/10.
    torch.testing.assert_close(mgda_weights(grads), torch.tensor([0.1, 0.9], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs the task losses"):
        mgda_weights(grads, None, "loss")


def test_end_to_end_mgda() -> None:
    logs = assert_end_to_end(MGDA(("a", "b", "c")), fn, head_weights=mgda_weights)
    assert abs(sum(logs[f"weight/{t}"] for t in "abc") - 1) < 1e-6
    # The other convention (LibMTL): heads get the gradient of Σ λ_t L_t.
    assert_end_to_end(MGDA(("a", "b", "c"), MGDAParams(heads="unweighted")), fn)


def test_end_to_end_mgda_loss_normalisation() -> None:
    def expected(grads: Tensor) -> Tensor:
        _, inputs = tiny_step(("a", "b"))
        losses = torch.stack([inputs.weights[t] * inputs.losses[t].detach() for t in ("a", "b")])
        return mgda_weights(grads, losses, "loss+") @ grads

    def weights(grads: Tensor) -> Tensor:
        _, inputs = tiny_step(("a", "b"))
        losses = torch.stack([inputs.weights[t] * inputs.losses[t].detach() for t in ("a", "b")])
        return mgda_weights(grads, losses, "loss+")

    assert_end_to_end(MGDA(("a", "b"), MGDAParams(normalization="loss+")), expected, head_weights=weights)


@pytest.mark.parametrize("batch", ["flatten", "sum"])
@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_end_to_end_mgda_ub(normalization: str, batch: str) -> None:
    """``flatten`` (official code): the batch is part of the vector; ``sum`` (LibMTL): summed over it."""
    names = ("a", "b", "c")
    model, inputs = tiny_step(names)
    z = inputs.representations["bottleneck"]
    assert isinstance(z, Tensor)
    rows = [torch.autograd.grad(inputs.weights[t] * inputs.losses[t], z, retain_graph=True)[0] for t in names]
    rep = torch.stack([r.sum(0) if batch == "sum" else r.reshape(-1) for r in rows])
    losses = torch.stack([inputs.weights[t] * inputs.losses[t].detach() for t in names])
    w = mgda_weights(rep, losses, normalization)
    objective = sum(float(w[i]) * inputs.weights[t] * inputs.losses[t] for i, t in enumerate(names))
    expected = torch.autograd.grad(objective, list(model.parameters()), retain_graph=True)  # type: ignore[arg-type]
    logs = MGDAUB(names, MGDAUBParams(normalization=normalization, batch=batch)).backward(inputs)  # type: ignore[arg-type]
    for p, want in zip(model.parameters(), expected):
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert_close_relative(p.grad, want, float(want.abs().max()), 1e-5, "MGDA-UB gradient")
    assert [logs[f"weight/{t}"] for t in names] == pytest.approx(w.tolist(), abs=1e-6)


def test_mgda_ub_batch_conventions_differ() -> None:
    """Flattening and summing give different weights on the same step (the option matters)."""
    names = ("a", "b", "c")
    weights = {}
    for batch in ("flatten", "sum"):
        _, inputs = tiny_step(names)
        logs = MGDAUB(names, MGDAUBParams(batch=batch)).backward(inputs)  # type: ignore[arg-type]
        weights[batch] = [logs[f"weight/{t}"] for t in names]
    assert max(abs(a - b) for a, b in zip(weights["flatten"], weights["sum"])) > 1e-3, weights


def test_mgda_ub_needs_the_representation() -> None:
    _, inputs = tiny_step(("a", "b"))
    inputs = StepInputs(inputs.losses, inputs.weights, inputs.shared_parameters, {}, 0)
    with pytest.raises(KeyError, match="bottleneck"):
        MGDAUB(("a", "b")).backward(inputs)


def test_zero_gradients_give_zero() -> None:
    assert torch.equal(fn(torch.zeros(3, 4)), torch.zeros(4))
    assert torch.isfinite(min_norm_weights(torch.zeros(3, 3))).all()
    # A zero task gradient is the min-norm point.
    torch.testing.assert_close(fn(STANDARD_INPUTS["zero_row_3x5"]), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("cls", [MGDA, MGDAUB])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("normalization", "L2"),
        ("max_iterations", 0),
        ("max_iterations", 2.5),
        ("tolerance", -1.0),
        ("tolerance", float("nan")),
    ],
)
def test_bad_parameters(cls: type, field: str, value: object) -> None:
    params = cls.Params(**{field: value})
    with pytest.raises(ValueError, match=rf"Parameter `{field}` .*Found `{field} = "):
        cls(("a", "b"), params)


def test_search_space() -> None:
    class Trial:
        def suggest_categorical(self, name: str, choices: list[str]) -> str:
            assert name == "normalization" and "loss+" in choices
            return choices[0]

    assert MGDA.search_space(Trial()) == {"normalization": "none"}
    assert MGDAUB.search_space(Trial()) == {"normalization": "none"}


@pytest.mark.parametrize(("cls", "field", "value"), [(MGDA, "heads", "both"), (MGDAUB, "batch", "mean")])
def test_bad_conventions(cls: type, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"Parameter `{field}` should be one of .*Found `{field} = "):
        cls(("a", "b"), cls.Params(**{field: value}))


def test_mgda_ub_fp16_autocast_skips_no_step() -> None:
    """fp16 autocast on the CPU with the trainer's loss scaler (2^16): two heads with opposed
    representation gradients of 1.2–1.8 per entry, so each task's scaled gradient overflows fp16
    (> 65504) while the weighted backward (w ≈ 0.44, 0.56) does not. Each overflowing per-task
    gradient is taken again at a smaller scale and unscaled in fp32, so the weights are the MGDA
    weights of the true gradients (before: NaN Gram matrix, silently w = ½) and no step is skipped."""
    from mtlbench.precision import Precision

    torch.manual_seed(0)
    trunk = torch.nn.Linear(4, 6)
    heads = torch.nn.ModuleDict(
        {"a": torch.nn.Linear(6, 1, bias=False), "b": torch.nn.Linear(6, 1, bias=False)}
    )
    with torch.no_grad():
        trunk.weight.mul_(1e-4)
        trunk.bias.zero_()
        heads["a"].weight.fill_(1.0)
        heads["b"].weight.fill_(-0.8)
    params = [*trunk.parameters(), *heads.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-6)
    precision = Precision.create(torch.device("cpu"), "fp16")
    method = MGDAUB(("a", "b"))
    g = torch.Generator().manual_seed(1)
    taken, overflowing = [], 0
    for step in range(12):  # one epoch of 12 batches
        x, y = torch.randn(4, 4, generator=g), 3.0 + 0.5 * torch.rand(4, generator=g)
        optimizer.zero_grad()
        with precision.autocast():
            z = torch.tanh(trunk(x))
            losses = {t: ((heads[t](z).squeeze(1).float() - y) ** 2).mean() for t in ("a", "b")}
        assert z.dtype == torch.float16
        scaled = [torch.autograd.grad(precision.scale(losses[t]), z, retain_graph=True)[0] for t in "ab"]
        overflowing += int(not any(bool(torch.isfinite(r).all()) for r in scaled))
        true = torch.stack(
            [torch.autograd.grad(losses[t], z, retain_graph=True)[0].float().reshape(-1) for t in "ab"]
        )
        expected = mgda_weights(true.double())
        inputs = StepInputs(
            losses,
            {"a": 1.0, "b": 1.0},
            list(trunk.parameters()),
            {"bottleneck": z},
            step,
            scale=precision.scale,
            head_parameters=list(heads.parameters()),
            loss_scale=precision.loss_scale,
        )
        logs = method.backward(inputs)
        assert [logs["weight/a"], logs["weight/b"]] == pytest.approx(expected.tolist(), abs=1e-3)
        taken.append(precision.step(optimizer))
    assert overflowing == 12, "both tasks' scaled representation gradients should overflow fp16"
    assert all(taken), f"skipped steps: {[k for k, ok in enumerate(taken) if not ok]}"
