"""Parity with the reference implementations on identical gradient matrices (1e-5 relative).

References (optional test dependencies; a missing one skips its tests):

* LibMTL 1.1.5 weighting classes, driven through their own ``backward``: a fake LibMTL model whose
  single shared parameter θ has task losses L_t = g_t·θ + 5, so ``_compute_grad`` reads exactly the
  rows of G (LibMTL keeps them in float32, hence float32 inputs here). The combined gradient is read
  back from θ.grad, the weights from the return value.
* torchjd 0.18 aggregators, called on the Jacobian matrix G.

Convention adjustments (only documented ones):

* LibMTL CAGrad has no ×T and uses α = ``calpha``: compared with ``scale_by_tasks=False``. LibMTL's
  SLSQP runs with SciPy's default tolerance (1e-6 on the objective), which leaves the weights
  accurate to only ~1e-3; the test tightens that tolerance (``ftol=1e-12``) through a wrapper around
  the ``minimize`` that LibMTL's module imported — the math is untouched. LibMTL's objective
  hard-codes ``reshape(1, 3)`` and therefore works only with exactly three tasks (a LibMTL bug), so
  the CAGrad parity uses T = 3.
* LibMTL MGDA applies the weights to the *normalised* gradients; we apply them to the raw gradients
  (the official code's choice). With ``none`` the results are compared; with ``l2``/``loss``/
  ``loss+`` the weights are.
* LibMTL IMTL is the hybrid IMTL-L+G; at its initial loss scales (s = 0, so e^s·L − s = L) its
  update is exactly IMTL-G.
* torchjd MGDA starts Frank–Wolfe at 𝟙/T and stops as soon as one step's γ < ε, which can happen
  far from the optimum (errors of 3e-2 on two of the three-task matrices here); it is compared with
  two tasks only, where both are exact. Three tasks are checked against LibMTL here and against an
  exact active-set solution in ``test_mgda.py``.
* PCGrad: LibMTL and torchjd draw the order from Python's/torch's global RNG; with two tasks the
  order does not matter and both sum the projected gradients, like us — no adjustment.
* torchjd CAGrad needs cvxpy; it is skipped when cvxpy is absent (LibMTL covers CAGrad).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlbench.methods.cagrad import cagrad_combine
from mtlbench.methods.imtl import imtl_g_combine, imtl_g_weights
from mtlbench.methods.mgda import mgda_combine, mgda_weights
from mtlbench.methods.pcgrad import pcgrad_combine
from tests.methods.grad_properties import assert_close_relative, conflicting_pair, random_full_rank

RTOL = 1e-5


def _matrices(n_tasks: int) -> dict[str, Tensor]:
    """float32 test matrices with conflicts (seeds chosen so that each has a conflicting pair)."""
    out = {f"random_{n_tasks}x8_seed{s}": random_full_rank(n_tasks, 8, seed=s).float() for s in range(3)}
    if n_tasks == 2:
        out["conflicting_pair"] = conflicting_pair().float()
    return out


# -- LibMTL ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libmtl() -> Any:
    try:
        from mtlbench.libmtl_compat import import_libmtl

        return import_libmtl("weighting")
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


def run_libmtl(libmtl: Any, name: str, grads: Tensor, **kwargs: Any) -> tuple[Tensor, Any]:
    """Drive LibMTL's ``name`` weighting on a fake model whose task gradients are the rows of ``grads``."""
    base = getattr(libmtl, name)
    n_tasks, n_params = grads.shape

    class FakeModel(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(n_params))
            self.task_num = n_tasks
            self.task_name = [f"t{i}" for i in range(n_tasks)]
            self.device = torch.device("cpu")
            self.rep_grad = False
            self.init_param()

        def get_share_params(self) -> list[nn.Parameter]:
            return [self.theta]

        def zero_grad_share_params(self) -> None:
            self.theta.grad = torch.zeros_like(self.theta)

    model = FakeModel()
    losses = grads @ model.theta + 5.0  # ∇_θ L_t = g_t exactly; L_t = 5 > 0 for the loss normalisations
    result = model.backward(losses, **kwargs)
    assert model.theta.grad is not None
    return model.theta.grad.detach().clone(), result


def _size(grads: Tensor) -> float:
    return float(grads.norm(dim=1).max())


@pytest.mark.parametrize("name", list(_matrices(2)))
def test_pcgrad_two_tasks_matches_libmtl(libmtl: Any, name: str) -> None:
    grads = _matrices(2)[name]
    assert float(grads[0] @ grads[1]) < 0 or name != "conflicting_pair"
    got, _ = run_libmtl(libmtl, "PCGrad", grads)
    assert_close_relative(pcgrad_combine(grads), got, _size(grads), RTOL, f"PCGrad vs LibMTL on {name}")


@pytest.fixture
def tight_libmtl_slsqp(libmtl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tighten the SLSQP tolerance that LibMTL's CAGrad leaves at SciPy's default (see module doc)."""
    module = sys.modules["LibMTL.weighting.CAGrad"]
    original: Callable[..., Any] = module.minimize

    def minimize(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("options", {})["ftol"] = 1e-12
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "minimize", minimize)


@pytest.mark.usefixtures("tight_libmtl_slsqp")
@pytest.mark.parametrize("name", list(_matrices(3)))
@pytest.mark.parametrize(("alpha", "rescale"), [(0.5, 1), (0.4, 0), (0.8, 2)])
def test_cagrad_matches_libmtl(libmtl: Any, name: str, alpha: float, rescale: int) -> None:
    grads = _matrices(3)[name]
    got, _ = run_libmtl(libmtl, "CAGrad", grads, calpha=alpha, rescale=rescale)
    ours = cagrad_combine(grads, alpha=alpha, rescale=rescale, scale_by_tasks=False)
    assert_close_relative(ours, got, _size(grads), RTOL, f"CAGrad vs LibMTL on {name}")


@pytest.mark.parametrize("n_tasks", [2, 3])
def test_mgda_matches_libmtl(libmtl: Any, n_tasks: int) -> None:
    for name, grads in _matrices(n_tasks).items():
        got, weights = run_libmtl(libmtl, "MGDA", grads, mgda_gn="none")
        assert weights is not None, "LibMTL's solver returned None (it does so when it hits 250 iterations)"
        assert_close_relative(mgda_combine(grads), got, _size(grads), RTOL, f"MGDA vs LibMTL on {name}")


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalised_weights_match_libmtl(libmtl: Any, normalization: str) -> None:
    for name, grads in _matrices(3).items():
        _, weights = run_libmtl(libmtl, "MGDA", grads, mgda_gn=normalization)
        losses = torch.full((grads.shape[0],), 5.0)
        ours = mgda_weights(grads, losses, normalization)
        assert_close_relative(
            ours, torch.as_tensor(weights), 1.0, RTOL, f"MGDA-{normalization} vs LibMTL on {name}"
        )


@pytest.mark.parametrize("n_tasks", [2, 3, 4])
def test_imtl_g_matches_libmtl_imtl_at_initial_loss_scales(libmtl: Any, n_tasks: int) -> None:
    for name, grads in _matrices(n_tasks).items():
        got, alpha = run_libmtl(libmtl, "IMTL", grads)
        assert_close_relative(imtl_g_combine(grads), got, _size(grads), RTOL, f"IMTL-G vs LibMTL on {name}")
        ours = imtl_g_weights(grads.double() @ grads.double().T)
        assert_close_relative(ours, torch.as_tensor(alpha).double(), 1.0, 1e-4, f"IMTL-G weights on {name}")


# -- torchjd --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aggregation() -> Any:
    return pytest.importorskip("torchjd.aggregation")


def _float64(n_tasks: int) -> dict[str, Tensor]:
    return {k: v.double() for k, v in _matrices(n_tasks).items()}


def test_pcgrad_two_tasks_matches_torchjd(aggregation: Any) -> None:
    for name, grads in _float64(2).items():
        ref = aggregation.PCGrad()(grads)
        assert_close_relative(pcgrad_combine(grads), ref, _size(grads), RTOL, f"PCGrad vs torchjd on {name}")


def test_mgda_two_tasks_matches_torchjd(aggregation: Any) -> None:
    for name, grads in _float64(2).items():
        ref = aggregation.MGDA(epsilon=1e-5, max_iters=250)(grads)
        assert_close_relative(mgda_combine(grads), ref, _size(grads), RTOL, f"MGDA vs torchjd on {name}")


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_imtl_g_matches_torchjd(aggregation: Any, n_tasks: int) -> None:
    for name, grads in _float64(n_tasks).items():
        ref = aggregation.IMTLG()(grads)
        assert_close_relative(imtl_g_combine(grads), ref, _size(grads), RTOL, f"IMTL-G vs torchjd on {name}")


def test_cagrad_matches_torchjd(aggregation: Any) -> None:
    """torchjd's CAGrad(c) with c = α is ours without rescale and ×T (its Gram normalisation leaves the
    weights unchanged); it needs cvxpy."""
    try:
        aggregator = aggregation.CAGrad(c=0.5)
    except ImportError as exc:
        pytest.skip(f"torchjd CAGrad unavailable: {exc}")
    for name, grads in _float64(3).items():
        ref = aggregator(grads)
        ours = cagrad_combine(grads, alpha=0.5, rescale=0, scale_by_tasks=False)
        assert_close_relative(ours, ref, _size(grads), RTOL, f"CAGrad vs torchjd on {name}")
