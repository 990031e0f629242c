"""Gramian weightings: methods whose shared update is ``wᵀG`` with weights from the Gram matrix.

In torchjd's spirit a weighting maps the T×T Gram matrix ``M = G Gᵀ`` (float64, CPU) and the step's
:class:`~mtlbench.api.gradients.StepContext` to task weights w. The base class computes ``G`` and
``M`` (in float64, chunked), applies ``wᵀG`` in float64, handles fp16 loss scaling, logs
``weight/<task>`` for every method and the task cosines (from ``M``, free) on diagnostic steps, and
gives the heads Σ w_t λ_t L_t when the method's ``heads`` parameter is ``"weighted"``. A new
weighting is one small file::

    @register_method("my_weighting")
    class MyWeighting(GramianWeighting):
        Params = MyParams

        def validate(self) -> None:
            check_param("beta", self.params.beta, low=0)

        def weights(self, gram, ctx):
            return my_weights(gram, self.params.beta), {}

:func:`normalised_gram` splits ``M = D C D`` into task norms ``n`` and cosines ``C``: solvers that
work with ``C`` (IMTL-G, MGDA, CAGrad, Nash-MTL) are insensitive to norm spreads of 1e6 and more,
where ``M`` itself has a condition number of 1e12 and beyond.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mtlbench.api.gradients import GradientCombination, StepContext, combine_rows, gram_cosines, gram_matrix

HeadWeighting = Literal["weighted", "unweighted"]
HEAD_WEIGHTINGS = ("weighted", "unweighted")


def weight_logs(names: Sequence[str], weights: Tensor, prefix: str = "weight") -> dict[str, float]:
    """``<prefix>/<task>`` → weight, the one spelling every method uses for its task weights."""
    return {f"{prefix}/{t}": float(w) for t, w in zip(names, weights.tolist())}


def normalised_gram(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(C, n, nonzero)`` with ``M = diag(n) C diag(n)`` in float64: n_t = ‖g_t‖, C the cosines.

    Rows with n_t = 0 get C_tt = 1 and zeros elsewhere; ``nonzero`` marks the others. C is formed
    from M entry by entry (C_ij = M_ij / (n_i n_j)), so a norm ratio of 1e6 costs no precision;
    rounding beyond ±1 is clipped.
    """
    m = gram.detach().to("cpu", torch.float64)
    m = (m + m.T) / 2
    n = m.diagonal().clamp_min(0).sqrt()
    nonzero = n > 0
    safe = torch.where(nonzero, n, torch.ones_like(n))
    c = m / safe[:, None] / safe[None, :]
    c = torch.where(nonzero[:, None] & nonzero[None, :], c, torch.zeros_like(c))
    c.fill_diagonal_(1.0)
    rounding = c.abs() <= 1.0 + 1e-9  # |cos| > 1 beyond rounding: not a Gram matrix; left visible
    return torch.where(rounding, c.clamp(-1.0, 1.0), c), n, nonzero


class GramianWeighting(GradientCombination):
    """Base class of weightings: implement :meth:`weights`; the update is ``wᵀG``.

    ``head_weighting`` is the default for heads (overridden by a ``heads`` field of ``Params``):
    ``"unweighted"`` gives each head the gradient of Σ λ_t L_t, ``"weighted"`` that of
    Σ w_t λ_t L_t (the official MGDA and Nash-MTL code).
    """

    head_weighting: HeadWeighting = "unweighted"

    def weights(self, gram: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """Task weights (T, float64) for the Gram matrix ``gram`` (float64, CPU), and extra logs."""
        raise NotImplementedError

    def postprocess(self, vector: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """A last transformation of the update (e.g. Nash-MTL's norm clipping); identity here."""
        return vector, {}

    def _weigh(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float], Tensor, Tensor]:
        gram = gram_matrix(grads)
        w, extra = self.weights(gram, ctx)
        w = w.detach().to("cpu", torch.float64)
        vector, post = self.postprocess(combine_rows(w, grads), ctx)
        logs = {**weight_logs(self.task_names, w), **extra, **post}
        return vector, logs, w, gram

    def aggregate(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        vector, logs, _, _ = self._weigh(grads, ctx)
        return vector, logs

    def shared_update(
        self, grads: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, float], Tensor | None]:
        vector, logs, w, gram = self._weigh(grads, ctx)
        if ctx.diagnostics:
            logs = {**gram_cosines(gram, self.task_names), **logs}
        heads = getattr(self.params, "heads", self.head_weighting)
        return vector, logs, (w if heads == "weighted" else None)
