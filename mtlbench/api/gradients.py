"""Shared bookkeeping for methods that combine per-task gradients of the shared parameters.

A subclass implements only :meth:`GradientCombination.combine`, a pure function of the T×P matrix
``G`` of per-task shared gradients (rows in ``task_names`` order) returning the P-vector that
becomes the shared gradient. This class computes ``G`` on the model's device (one
``autograd.grad`` per task of the weighted loss λ_t·L_t), gives the heads their ordinary gradient of
Σ λ_t L_t, and writes the combined vector into the shared parameters' ``.grad``.

Under fp16 loss scaling ``G`` is divided by the loss scale before ``combine`` and the result is
multiplied by it again, so methods whose output is not proportional to their input (Nash-MTL,
normalising methods) see true gradients, and the scaler's later unscale stays correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import MethodNeeds, MultiTaskMethod, StepInputs, detach_float


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
            return torch.cat(
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
    rows = []
    for loss in losses:
        if not loss.requires_grad:
            rows.append(torch.cat([torch.zeros_like(p).reshape(-1) for p in params]))
            continue
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        rows.append(flat_grads(grads, params))
    return torch.stack(rows)


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


class GradientCombination(MultiTaskMethod):
    """Base class: per-task shared gradients → :meth:`combine` → the shared ``.grad``."""

    needs = MethodNeeds(shared_grads=True)

    def combine(self, grads: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Return the combined P-vector for the T×P ``grads`` and diagnostics (e.g. task weights)."""
        raise NotImplementedError

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        weighted = [inputs.weights[t] * inputs.losses[t] for t in self.task_names]
        shared = [p for p in inputs.shared_parameters if p.requires_grad]
        heads = [p for p in inputs.head_parameters if p.requires_grad]
        total = sum(weighted)
        scaled = [inputs.scale(loss) for loss in weighted]
        grads = task_gradient_matrix(scaled, shared) / inputs.loss_scale
        if heads:
            head_grads = torch.autograd.grad(
                inputs.scale(total), heads, retain_graph=False, allow_unused=True
            )
            for p, g in zip(heads, head_grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        combined, logs = self.combine(grads.float())
        assign_flat_grad(combined * inputs.loss_scale, shared)
        out = {"loss": detach_float(total)}
        out.update(pairwise_cosines(grads, self.task_names))
        out.update(logs)
        return out
