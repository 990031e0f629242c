"""Shared property checks for gradient-combination methods (torchjd-style), plus standard inputs.

A *combination function* maps the T×P matrix ``G`` of per-task gradients (rows = tasks) to the
P-vector that becomes the shared gradient: ``fn(G: Tensor[T, P]) -> Tensor[P]``. Wrap a method's
pure function with its hyper-parameters bound, e.g. ``lambda G: cagrad_combine(G, alpha=0.5)`` or
``lambda G: method.combine(G)[0]``. Each method's test opts into the properties it claims::

    from tests.methods.grad_properties import (
        STANDARD_INPUTS, assert_shape_and_finite, assert_permutation_invariant,
        assert_scaling_behaviour, assert_handles_zero_and_rank_deficient, assert_non_conflicting,
    )

    def test_properties() -> None:
        assert_shape_and_finite(fn)
        assert_permutation_invariant(fn)
        assert_scaling_behaviour(fn)                  # fn(s·G) == s·fn(G) for s in 0 … 1e15
        assert_scaling_behaviour(fn, linear=False)    # only finiteness, for non-homogeneous methods
        assert_handles_zero_and_rank_deficient(fn)
        assert_non_conflicting(fn)                    # ⟨g_t, fn(G)⟩ >= 0 for every task t
        assert_in_row_span(fn)                        # fn(G) is a combination of the rows of G
        assert_golden(fn, [[1, 0], [-1, 1]], [0.5, 1.5])

    def test_end_to_end() -> None:                    # through MultiTaskMethod.backward
        assert_end_to_end(PCGrad(("a", "b")), lambda G: pcgrad_combine(G, ...))

Every helper accepts ``matrices`` (a mapping name → T×P tensor) to restrict or extend the inputs;
the default is :data:`STANDARD_INPUTS` (float64, seeded). Tolerances are *relative*: differences
are compared against the size of ``G`` (its largest row norm), so the same tolerance works from
1e-10 to 1e15. Failure messages name the input matrix. The module has no pytest test functions of
its own, so importing it never collects tests. :func:`assert_end_to_end` runs a method's real
``backward`` on a tiny shared-trunk model (:func:`tiny_step`) and compares the shared gradient with
the pure function applied to an independently computed task matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mtlbench.api.method import StepInputs

CombineFn = Callable[[Tensor], Tensor]
"""T×P gradient matrix → combined P-vector."""

DTYPE = torch.float64


def random_full_rank(
    n_tasks: int = 3, n_params: int = 7, seed: int = 0, dtype: torch.dtype = DTYPE
) -> Tensor:
    """A seeded Gaussian T×P matrix (full row rank with probability one)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_tasks, n_params, generator=g, dtype=dtype)


def rank_deficient(
    n_tasks: int = 4, n_params: int = 6, rank: int = 2, seed: int = 1, dtype: torch.dtype = DTYPE
) -> Tensor:
    """A seeded T×P matrix of rank ``rank`` < T (rows are combinations of ``rank`` directions)."""
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(n_tasks, rank, generator=g, dtype=dtype)
    right = torch.randn(rank, n_params, generator=g, dtype=dtype)
    return left @ right


def with_zero_row(
    n_tasks: int = 3, n_params: int = 5, row: int = 1, seed: int = 2, dtype: torch.dtype = DTYPE
) -> Tensor:
    """A seeded T×P matrix whose row ``row`` is exactly zero (a task that does not reach θ_s)."""
    m = random_full_rank(n_tasks, n_params, seed, dtype)
    m[row] = 0
    return m


def conflicting_pair(dtype: torch.dtype = DTYPE) -> Tensor:
    """Two strongly conflicting tasks of different sizes (cos ≈ −0.98, norms 1 and 10)."""
    a = torch.tensor([1.0, 0.2, 0.0], dtype=dtype)
    b = torch.tensor([-10.0, 0.0, 1.0], dtype=dtype)
    return torch.stack([a / a.norm(), b])


def two_tasks(seed: int = 3, n_params: int = 5, dtype: torch.dtype = DTYPE) -> Tensor:
    """A seeded random 2×P matrix."""
    return random_full_rank(2, n_params, seed, dtype)


STANDARD_INPUTS: dict[str, Tensor] = {
    "full_rank_3x7": random_full_rank(),
    "wide_5x20": random_full_rank(5, 20, seed=4),
    "two_tasks_2x5": two_tasks(),
    "rank_deficient_4x6_r2": rank_deficient(),
    "zero_row_3x5": with_zero_row(),
    "conflicting_pair_2x3": conflicting_pair(),
}
"""Standard inputs (name → float64 T×P matrix). Copy before modifying: the tensors are shared."""

TWO_TASK_INPUTS: dict[str, Tensor] = {k: v for k, v in STANDARD_INPUTS.items() if v.shape[0] == 2}
"""The two-task subset of :data:`STANDARD_INPUTS`."""


def _inputs(matrices: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return dict(STANDARD_INPUTS if matrices is None else matrices)


def _size(matrix: Tensor) -> float:
    """The reference size of ``G`` for relative tolerances: its largest row norm (1 for G = 0)."""
    s = float(matrix.norm(dim=1).max()) if matrix.numel() else 0.0
    return s if s > 0 else 1.0


def assert_close_relative(
    actual: Tensor, expected: Tensor, reference: float, rtol: float, label: str
) -> None:
    """``|actual − expected| <= rtol·reference`` entry-wise, with a message naming ``label``."""
    err = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    assert err <= rtol * reference, (
        f"{label}: max abs difference {err:.3e} exceeds {rtol:.1e} × {reference:.3e}\n"
        f"actual={actual}\nexpected={expected}"
    )


def assert_shape_and_finite(fn: CombineFn, matrices: Mapping[str, Tensor] | None = None) -> None:
    """The result is a finite P-vector with the input's dtype for every input matrix."""
    for name, m in _inputs(matrices).items():
        out = fn(m.clone())
        assert isinstance(out, Tensor), f"{name}: result is {type(out)}, not a Tensor"
        assert out.shape == (m.shape[1],), (
            f"{name}: result shape {tuple(out.shape)}, expected ({m.shape[1]},)"
        )
        assert out.dtype == m.dtype, f"{name}: result dtype {out.dtype}, input {m.dtype}"
        assert torch.isfinite(out).all(), f"{name}: non-finite result {out}"


def assert_permutation_invariant(
    fn: CombineFn,
    matrices: Mapping[str, Tensor] | None = None,
    n_permutations: int = 5,
    rtol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Permuting the tasks (rows of ``G``) does not change the result."""
    g = torch.Generator().manual_seed(seed)
    for name, m in _inputs(matrices).items():
        ref = fn(m.clone())
        for _ in range(n_permutations):
            perm = torch.randperm(m.shape[0], generator=g)
            out = fn(m[perm].clone())
            assert_close_relative(out, ref, _size(m), rtol, f"{name} permuted {perm.tolist()}")


def assert_scaling_behaviour(
    fn: CombineFn,
    matrices: Mapping[str, Tensor] | None = None,
    scales: Sequence[float] = (0.0, 1e-10, 1.0, 1e5, 1e15),
    linear: bool = True,
    rtol: float = 1e-6,
) -> None:
    """``fn(s·G)`` is finite for every scale; with ``linear`` it also equals ``s·fn(G)``.

    ``linear=True`` claims positive homogeneity of degree one (PCGrad, CAGrad, MGDA, IMTL-G): at
    ``s = 0`` the result must be exactly the zero vector's size (≤ rtol of nothing, i.e. zero).
    """
    for name, m in _inputs(matrices).items():
        ref = fn(m.clone())
        for s in scales:
            out = fn(m * s)
            assert torch.isfinite(out).all(), f"{name} × {s:g}: non-finite result {out}"
            if linear:
                reference = _size(m) * s if s > 0 else 1e-300
                assert_close_relative(out, ref * s, reference, rtol, f"{name} × {s:g}")


def assert_handles_zero_and_rank_deficient(
    fn: CombineFn,
    zero_gives_zero: bool = True,
    shapes: Sequence[tuple[int, int]] = ((2, 4), (3, 5)),
) -> None:
    """All-zero ``G`` gives a finite (by default zero) result; rank-deficient, duplicated-row and
    zero-row inputs give finite results."""
    for t, p in shapes:
        zero = torch.zeros(t, p, dtype=DTYPE)
        out = fn(zero)
        assert torch.isfinite(out).all(), f"zeros {t}x{p}: non-finite result {out}"
        if zero_gives_zero:
            assert torch.equal(out, torch.zeros_like(out)), f"zeros {t}x{p}: result {out} is not zero"
    row = random_full_rank(1, 5, seed=7)[0]
    cases = {
        "rank_deficient_4x6_r2": rank_deficient(),
        "rank_one_3x6": rank_deficient(3, 6, rank=1, seed=5),
        "duplicated_rows_3x5": torch.stack([row, row, -0.5 * row]),
        "zero_row_first_3x5": with_zero_row(row=0),
        "zero_row_last_3x5": with_zero_row(row=2),
        "two_zero_rows_3x5": torch.stack([row, torch.zeros_like(row), torch.zeros_like(row)]),
    }
    for name, m in cases.items():
        out = fn(m.clone())
        assert out.shape == (m.shape[1],), f"{name}: result shape {tuple(out.shape)}"
        assert torch.isfinite(out).all(), f"{name}: non-finite result {out}"


def assert_non_conflicting(
    fn: CombineFn, matrices: Mapping[str, Tensor] | None = None, rtol: float = 1e-6
) -> None:
    """``⟨g_t, fn(G)⟩ >= 0`` for every task t (up to ``rtol``·‖g_t‖·‖fn(G)‖ for round-off)."""
    for name, m in _inputs(matrices).items():
        out = fn(m.clone())
        products = m.double() @ out.double()
        slack = rtol * m.double().norm(dim=1) * out.double().norm()
        bad = products < -slack
        assert not bad.any(), (
            f"{name}: ⟨g_t, d⟩ = {products.tolist()} is negative for tasks {bad.nonzero().flatten().tolist()}"
        )


def assert_in_row_span(
    fn: CombineFn, matrices: Mapping[str, Tensor] | None = None, rtol: float = 1e-6
) -> None:
    """The result is a linear combination of the task gradients (lies in the row space of ``G``)."""
    for name, m in _inputs(matrices).items():
        out = fn(m.clone()).double()
        coef = torch.linalg.lstsq(m.double().T, out.unsqueeze(1)).solution
        residual = m.double().T @ coef - out.unsqueeze(1)
        assert_close_relative(
            residual.flatten(), torch.zeros_like(residual.flatten()), _size(m), rtol, f"{name} span"
        )


def assert_golden(
    fn: CombineFn,
    matrix: Sequence[Sequence[float]] | Tensor,
    expected: Sequence[float] | Tensor,
    rtol: float = 1e-6,
) -> None:
    """``fn(matrix)`` equals a hand-computed ``expected`` vector (float64)."""
    m = torch.as_tensor(matrix, dtype=DTYPE)
    want = torch.as_tensor(expected, dtype=DTYPE)
    assert_close_relative(fn(m), want, _size(m), rtol, f"golden {m.tolist()}")


# -- an end-to-end check through the real method interface ------------------------------------------


class SharedTrunkNet(torch.nn.Module):
    """A shared ``Linear → tanh`` trunk (the "bottleneck" representation) and one linear head per task."""

    def __init__(self, task_names: Sequence[str], n_in: int = 4, n_hidden: int = 5) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(n_in, n_hidden)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(n_hidden, 1) for t in task_names})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = torch.tanh(self.trunk(x))
        return z, {t: head(z).squeeze(1) for t, head in self.heads.items()}


def tiny_step(
    task_names: Sequence[str] = ("a", "b", "c"),
    seed: int = 0,
    batch: int = 6,
    step: int = 0,
    diagnostics: bool = False,
) -> tuple[SharedTrunkNet, StepInputs]:
    """A seeded :class:`SharedTrunkNet` and the :class:`StepInputs` of one step on it.

    Targets of consecutive tasks have opposite signs so their gradients usually conflict; the
    configured weights are 1, 0.5, 2, 1, … so that λ_t matters.
    """
    from mtlbench.api.method import StepInputs

    torch.manual_seed(seed)
    model = SharedTrunkNet(task_names)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 4, generator=g)
    base = torch.randn(batch, generator=g)
    z, outputs = model(x)
    losses = {t: ((outputs[t] - (-1) ** i * base * (i + 1)) ** 2).mean() for i, t in enumerate(task_names)}
    cycle = (1.0, 0.5, 2.0)
    weights = {t: cycle[i % 3] for i, t in enumerate(task_names)}
    inputs = StepInputs(
        losses=losses,
        weights=weights,
        shared_parameters=list(model.trunk.parameters()),
        representations={"bottleneck": z},
        step=step,
        head_parameters=list(model.heads.parameters()),
        diagnostics=diagnostics,
    )
    return model, inputs


def independent_task_matrix(inputs: StepInputs, params: Sequence[Tensor]) -> Tensor:
    """The T×P matrix of ∇(λ_t L_t) w.r.t. ``params``, computed here without the method's helpers."""
    rows = []
    for t, loss in inputs.losses.items():
        grads = torch.autograd.grad(inputs.weights[t] * loss, list(params), retain_graph=True)
        rows.append(torch.cat([gr.reshape(-1) for gr in grads]))
    return torch.stack(rows)


def assert_end_to_end(
    method: Any,
    expected_shared: Callable[[Tensor], Tensor],
    rtol: float = 1e-5,
    head_weights: Callable[[Tensor], Tensor] | None = None,
    diagnostics: bool = False,
) -> dict[str, float]:
    """Run ``method.backward`` on :func:`tiny_step` and check the gradients it leaves behind.

    Every parameter gets a finite ``.grad``; the shared ``.grad`` equals ``expected_shared(G)`` for
    the independently computed float32 task matrix G; each head's ``.grad`` equals the gradient of
    Σ λ_t L_t, or of Σ w_t λ_t L_t with ``w = head_weights(G)`` (methods that weight the heads).
    Returns the method's logs (all floats).
    """
    model, inputs = tiny_step(method.task_names, diagnostics=diagnostics)
    shared = list(model.trunk.parameters())
    heads = list(model.heads.parameters())
    matrix = independent_task_matrix(inputs, shared)
    expected = expected_shared(matrix.detach())
    head_loss = inputs.weighted_sum()
    if head_weights is not None:
        w = head_weights(matrix.detach()).tolist()
        head_loss = sum(wt * inputs.weights[t] * inputs.losses[t] for wt, t in zip(w, method.task_names))
    head_expected = torch.autograd.grad(head_loss, heads, retain_graph=True)
    logs = method.backward(inputs)
    assert all(isinstance(v, float) for v in logs.values()), logs
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    assert_close_relative(got, expected, float(matrix.norm(dim=1).max()), rtol, "shared gradient")
    for p, want in zip(heads, head_expected):
        assert_close_relative(p.grad, want, float(want.abs().max()) + 1e-12, rtol, "head gradient")
    return logs


# -- adversarial matrices: where solvers break ------------------------------------------------------


def adversarial(
    n_tasks: int,
    spread: float = 1e6,
    opposed: bool = True,
    seed: int = 0,
    n_params: int = 12,
    zero_rows: int = 0,
    rank: int | None = None,
    cos: float = -1 + 1e-6,
) -> Tensor:
    """A seeded float64 T×P matrix with row norms log-spaced over ``spread`` (1e6: 1e-3 … 1e3, in a
    random order), optionally rows 0 and 1 at cosine ``cos`` (near-opposed), the last ``zero_rows``
    rows zero, or rank ``rank`` (rows drawn from a ``rank``-dimensional subspace)."""
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        base = torch.randn(n_tasks, n_params, generator=g, dtype=DTYPE)
    else:
        left = torch.randn(n_tasks, rank, generator=g, dtype=DTYPE)
        base = left @ torch.randn(rank, n_params, generator=g, dtype=DTYPE)
    units = base / base.norm(dim=1, keepdim=True)
    if opposed and n_tasks >= 2:
        other = units[1] - (units[1] @ units[0]) * units[0]
        units[1] = cos * units[0] + (1 - cos * cos) ** 0.5 * other / other.norm()
    half = 0.5 * torch.log10(torch.tensor(float(spread), dtype=DTYPE))
    norms = torch.logspace(float(-half), float(half), n_tasks, dtype=DTYPE)
    out = units * norms[torch.randperm(n_tasks, generator=g)][:, None]
    if zero_rows:
        out[n_tasks - zero_rows :] = 0
    return out


ADVERSARIAL_INPUTS: dict[str, Tensor] = {
    **{
        f"T{t}_spread{s:.0e}_{'opposed' if o else 'random'}": adversarial(t, s, o, seed=t)
        for t in (2, 3, 5, 8)
        for s in (1e3, 1e6)
        for o in (False, True)
    },
    "T4_spread1e+06_opposed_zero_row": adversarial(4, 1e6, True, seed=9, zero_rows=1),
    "T5_spread1e+06_rank3": adversarial(5, 1e6, False, seed=10, rank=3),
    "T6_spread1e+06_opposed_rank4": adversarial(6, 1e6, True, seed=11, rank=4),
}
"""Norm spreads 1e3 and 1e6, cos = −1 + 1e-6 pairs, T = 2…8, a zero row, rank deficiency (float64)."""

HARDEST: dict[str, Tensor] = {k: v for k, v in ADVERSARIAL_INPUTS.items() if "1e+06_opposed" in k}
"""The hardest inputs: norm spread 1e6 and a near-opposed pair (cos = −1 + 1e-6)."""
