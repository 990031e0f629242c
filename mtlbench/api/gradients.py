"""Shared bookkeeping for methods that combine per-task gradients of the shared parameters.

:class:`GradientCombination` owns the backward pass: it computes the T×P matrix ``G`` of per-task
shared gradients on the model's device (one ``autograd.grad`` per task of λ_t·L_t), hands it with an
explicit :class:`StepContext` (step, task names, the detached λ_t·L_t, a per-step RNG, whether this
is a diagnostic step) to :meth:`GradientCombination.aggregate`, writes the resulting vector into the
shared parameters' ``.grad`` and gives the heads their gradient. A matrix → vector method (PCGrad,
GradDrop, ConFIG …) overrides ``aggregate(G, ctx)``; older methods override ``combine(G)`` only (it
is called with the same ``G``). Task-weighting methods derive from
:class:`mtlbench.api.weighting.GramianWeighting` instead and implement only the weights.

Under fp16 loss scaling ``G`` is divided by the loss scale before ``aggregate`` and the result is
multiplied by it again, so methods whose output is not proportional to their input (Nash-MTL,
normalising methods) see true gradients, and the scaler's later unscale stays correct.

Heads: by default each head receives the gradient of Σ λ_t L_t (LibMTL's and the CAGrad
repository's convention). A weighting whose official code back-propagates Σ w_t L_t through the
heads (MGDA, Nash-MTL) returns its weights as ``head_weights`` and the heads get Σ w_t λ_t L_t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlbench.api.method import MethodNeeds, MultiTaskMethod, StepInputs, detach_float
from mtlbench.distributed import all_reduce_mean_


def flat_grads(grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> Tensor:
    """Concatenate gradients into one vector (zeros for parameters a loss does not reach)."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def task_gradient_matrix(
    losses: Sequence[Tensor], params: Sequence[nn.Parameter], batched: bool | None = None
) -> Tensor:
    """The T×P matrix of per-task gradients of ``params``, kept on the parameters' device.

    ``batched`` takes all T gradients in one vectorised backward (``is_grads_batched``); ``None``
    picks it on CUDA only: on the CPU it measured about 7× slower than T plain backward passes
    (unet_small, 64 px, batch 8). Operators without a batching rule fall back to the loop.

    Under ``torchrun`` the matrix is averaged over the ranks before it is returned, so every rank
    combines the global batch's gradients (a combination is nonlinear in ``G``: averaging per-rank
    combinations would not be the single-process update). Every rank must call it, in step.
    """
    if batched is None:
        batched = bool(params) and params[0].device.type == "cuda"
    if batched and all(loss.requires_grad for loss in losses):
        try:
            grads = torch.autograd.grad(
                torch.stack(list(losses)),
                list(params),
                grad_outputs=torch.eye(len(losses), device=losses[0].device, dtype=losses[0].dtype),
                retain_graph=True,
                is_grads_batched=True,
                allow_unused=True,
            )
            matrix = torch.cat(
                [
                    (
                        torch.zeros(len(losses), p.numel(), device=p.device, dtype=p.dtype)
                        if g is None
                        else g
                    ).reshape(len(losses), -1)
                    for g, p in zip(grads, params)
                ],
                dim=1,
            )
        except RuntimeError:
            pass  # no batching rule for some operator: one backward per task instead
        else:
            return all_reduce_mean_(matrix)
    rows = []
    for loss in losses:
        if not loss.requires_grad:
            rows.append(torch.cat([torch.zeros_like(p).reshape(-1) for p in params]))
            continue
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        rows.append(flat_grads(grads, params))
    return all_reduce_mean_(torch.stack(rows))


def task_gradients_through_head_inputs(
    losses: Sequence[Tensor],
    head_inputs: Sequence[Tensor],
    shared: Sequence[nn.Parameter],
    heads: Sequence[nn.Parameter],
) -> tuple[Tensor, list[list[Tensor | None]]]:
    """The T×P matrix of per-task shared gradients and each task's head-parameter gradients.

    Per task, one backward through the heads to the head parameters *and* the heads' inputs (cut
    points of the backbone's features, ``StepInputs.head_inputs``), then one from those inputs into
    the backbone: the same T backward passes as :func:`task_gradient_matrix`, but the heads' own
    gradients come out of them, so no further pass through the heads is needed (by linearity the
    heads' gradient of Σ w_t L_t is Σ w_t of the per-task ones). Averaged over ranks under
    ``torchrun``, as :func:`task_gradient_matrix`.
    """
    n = len(head_inputs)
    rows, head_rows = [], []
    for loss in losses:
        if not loss.requires_grad:
            rows.append(torch.cat([torch.zeros_like(p).reshape(-1) for p in shared]))
            head_rows.append([None] * len(heads))
            continue
        grads = torch.autograd.grad(loss, [*head_inputs, *heads], retain_graph=True, allow_unused=True)
        reached = [(x, g) for x, g in zip(head_inputs, grads[:n]) if g is not None]
        backbone: Sequence[Tensor | None] = [None] * len(shared)
        if reached and shared:
            backbone = torch.autograd.grad(
                [x for x, _ in reached],
                list(shared),
                grad_outputs=[g for _, g in reached],
                retain_graph=True,
                allow_unused=True,
            )
        rows.append(flat_grads(backbone, shared))
        head_rows.append(list(grads[n:]))
    return all_reduce_mean_(torch.stack(rows)), head_rows


def assign_flat_grad(vector: Tensor, params: Sequence[nn.Parameter]) -> None:
    """Write (accumulate) a flat vector into ``.grad`` of ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = vector[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = chunk.clone() if p.grad is None else p.grad + chunk
        offset += n
    if offset != vector.numel():
        raise ValueError(f"gradient vector has {vector.numel()} entries, parameters {offset}")


def pairwise_cosines(matrix: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Cosine similarity of every pair of rows, keyed ``cos/<a>-<b>`` (0 for a zero row)."""
    m = matrix.float()
    norms = m.norm(dim=1)
    out = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            denom = norms[a] * norms[b]
            value = (m[a] @ m[b]) / denom if denom > 0 else m.new_zeros(())
            out[f"cos/{names[a]}-{names[b]}"] = detach_float(value)
    return out


_GOLDEN = 0x9E3779B97F4A7C15
#: Columns per chunk when ``G`` is promoted to float64 (bounds the extra memory to T × 4 Mi × 8 bytes).
_CHUNK = 1 << 22


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded deterministically from ``(seed, step)`` (no global RNG involved)."""
    return torch.Generator().manual_seed((seed * _GOLDEN + step) % (2**63))


@dataclass(frozen=True)
class StepContext:
    """What a combination may use besides ``G``: passed explicitly, never through attributes.

    ``losses`` are the detached task objectives λ_t·L_t (float64, CPU, ``task_names`` order) or
    ``None`` outside a training step (pure calls of :meth:`GradientCombination.combine`).
    """

    task_names: tuple[str, ...]
    step: int = 0
    losses: Tensor | None = None
    diagnostics: bool = False

    def generator(self, seed: int) -> torch.Generator:
        """The per-step generator of a run seeded with ``seed`` (same draws after a resume)."""
        return step_generator(seed, self.step)


def gram_matrix(grads: Tensor) -> Tensor:
    """``G Gᵀ`` in float64 on the CPU, accumulated over column chunks (``G`` stays where it is).

    ``G`` is divided by its largest absolute entry first, so neither 1e-30 nor 1e30 gradients
    under- or overflow; the result is scaled back. Float64 matters: a cosine of −1 + 1e-6 or a
    norm ratio of 1e6 is beyond float32.
    """
    t = grads.shape[0]
    if grads.numel() == 0:
        return torch.zeros(t, t, dtype=torch.float64)
    peak = float(grads.detach().abs().max())
    if not peak > 0 or not torch.isfinite(torch.tensor(peak)):
        return torch.full((t, t), 0.0 if peak == 0 else float("nan"), dtype=torch.float64)
    out = torch.zeros(t, t, dtype=torch.float64, device=grads.device)
    for start in range(0, grads.shape[1], _CHUNK):
        block = grads.detach()[:, start : start + _CHUNK].double() / peak
        out += block @ block.T
    out = (out + out.T) / 2
    return out.cpu() * peak**2


def combine_rows(weights: Tensor, grads: Tensor) -> Tensor:
    """``wᵀG`` with the products and sums in float64 (chunked), returned in ``G``'s dtype.

    Near-opposed gradients cancel in ``wᵀG``: in float32 the rounding of w alone would leave a
    relative error of 1e-7·‖w_t g_t‖/‖wᵀG‖, which is large exactly where the methods differ.
    """
    w = weights.detach().to(grads.device, torch.float64)
    parts = [w @ grads[:, s : s + _CHUNK].double() for s in range(0, grads.shape[1], _CHUNK)]
    out = torch.cat(parts) if parts else grads.new_zeros(grads.shape[1], dtype=torch.float64)
    return out.to(grads.dtype)


def gram_cosines(gram: Tensor, names: Sequence[str]) -> dict[str, float]:
    """``cos/<a>-<b>`` for every task pair from the Gram matrix (0 for a zero row)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    out = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            denom = float(norms[a] * norms[b])
            out[f"cos/{names[a]}-{names[b]}"] = float(gram[a, b]) / denom if denom > 0 else 0.0
    return out


class GradientCombination(MultiTaskMethod):
    """Base class: per-task shared gradients → :meth:`aggregate` → the shared ``.grad``."""

    needs = MethodNeeds(shared_grads=True)

    def aggregate(self, grads: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """The combined P-vector for the T×P ``grads`` and diagnostics, given the step's context."""
        if type(self).combine is GradientCombination.combine:
            raise NotImplementedError(f"{type(self).__name__} implements neither aggregate nor combine")
        return self.combine(grads)

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``aggregate`` with a neutral context (step 0, no losses): the pure-function entry point."""
        if type(self).aggregate is GradientCombination.aggregate:
            raise NotImplementedError(f"{type(self).__name__} implements neither aggregate nor combine")
        return self.aggregate(grads, StepContext(self.task_names))

    def shared_update(
        self, grads: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, float], Tensor | None]:
        """(vector, logs, head weights or None) — ``None``: heads get the gradient of Σ λ_t L_t."""
        vector, logs = self.aggregate(grads, ctx)
        if ctx.diagnostics:
            logs = {**pairwise_cosines(grads, self.task_names), **logs}
        return vector, logs, None

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        weighted = [inputs.weights[t] * inputs.losses[t] for t in self.task_names]
        shared = [p for p in inputs.shared_parameters if p.requires_grad]
        heads = [p for p in inputs.head_parameters if p.requires_grad]
        scaled = [inputs.scale(loss) for loss in weighted]
        per_task_heads: list[list[Tensor | None]] | None = None
        with inputs.phase("task gradients"):
            if inputs.head_inputs:
                grads, per_task_heads = task_gradients_through_head_inputs(
                    scaled, inputs.head_inputs, shared, heads
                )
            else:
                grads = task_gradient_matrix(scaled, shared)
            grads = grads / inputs.loss_scale
        ctx = StepContext(
            self.task_names,
            int(inputs.step),
            torch.tensor([detach_float(f) for f in weighted], dtype=torch.float64),
            bool(inputs.diagnostics),
        )
        with inputs.phase("combination"):
            combined, logs, head_weights = self.shared_update(grads.float(), ctx)
            assign_flat_grad(combined * inputs.loss_scale, shared)
        factors = [1.0] * len(weighted) if head_weights is None else [float(w) for w in head_weights.tolist()]
        with inputs.phase("head gradients"):
            if per_task_heads is not None:
                for j, p in enumerate(heads):
                    parts = [f * row[j] for f, row in zip(factors, per_task_heads) if row[j] is not None]
                    if parts:
                        g = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
                        p.grad = g if p.grad is None else p.grad + g
            else:
                head_loss = sum(f * w for f, w in zip(factors, weighted))
                if heads and isinstance(head_loss, Tensor) and head_loss.requires_grad:
                    head_grads = torch.autograd.grad(inputs.scale(head_loss), heads, allow_unused=True)
                    for p, g in zip(heads, head_grads):
                        if g is not None:
                            p.grad = g if p.grad is None else p.grad + g
        return {"loss": detach_float(sum(weighted)), **logs}  # type: ignore[arg-type]
