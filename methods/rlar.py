"""RLAR — representation-level adversarial regularisation (Salama et al., Eq. 4–7).

For each task t the adversarial direction in representation space is
``δ_t = ε ∇_z L_t / (‖∇_z L_t‖ + ε)`` (Eq. 4). Flattened per sample, task pairs are compared by
cosine similarity (Eq. 5) and their absolute values averaged (Eq. 6)::

    L_RLAR = λ_adv / B · Σ_i 2/(T(T−1)) · Σ_{t<t'} |cos(δ_t^(i), δ_t'^(i))|

and the total objective is ``Σ_t λ_t L_t + L_RLAR`` (Eq. 7).

Conventions pinned here (see ``methods.md``):

* δ_t is a positive multiple of ∇_z L_t, so the cosine is computed on the gradients directly and
  ε does not appear: it cannot change the penalty.
* The gradients are taken with ``create_graph=True`` so that the penalty is differentiable; the
  final ``backward`` runs the second-order pass through the heads and an ordinary pass into the
  encoder. ``autograd.grad`` is called outside autocast and the cosines are computed in float32.
* Under fp16 loss scaling the gradients of the *scaled* losses are taken (the cosine ignores the
  scale), so small per-pixel segmentation gradients do not underflow.
* A sample whose gradient for a task is exactly zero (its target is missing, or the task's loss
  does not reach the representation) has no direction: its pairs are left out of the mean.
  With every pair present this is exactly Eq. 6.
* ``representation`` picks the probed tensor (the paper's Tables 3–4): ``bottleneck`` (deepest
  encoder feature map, default), ``last`` (the encoder stage before the bottleneck), ``mid`` (the
  middle encoder stage) or ``mean_last3`` (the last three levels: each level's per-sample gradient
  is normalised to unit length and the levels concatenated, so the cosine is the mean of the
  per-level cosines — the mean direction over the three levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlbench.registry import register_method

from .base import MethodNeeds, MultiTaskMethod, StepInputs, detach_float, gradient_norms

Representation = Literal["bottleneck", "last", "mid", "mean_last3"]


@dataclass(frozen=True)
class RLARParams:
    """RLAR hyper-parameters."""

    lambda_adv: float = 0.1
    representation: Representation = "bottleneck"


def per_sample_directions(grads: Sequence[Tensor]) -> Tensor:
    """Flatten one task's gradient(s) per sample into a float32 (B, D) matrix.

    With several levels each level's row is scaled to unit length before concatenation (zero rows
    stay zero), so that no level dominates by size.
    """
    rows = [g.float().flatten(1) for g in grads]
    if len(rows) == 1:
        return rows[0]
    tiny = torch.finfo(torch.float32).tiny
    units = []
    for r in rows:
        scale = r.detach().abs().amax(dim=1, keepdim=True).clamp_min(tiny)
        r = r / scale
        norm = (r * r).sum(dim=1, keepdim=True).clamp_min(tiny).sqrt()
        units.append(r / norm)
    return torch.cat(units, dim=1)


def pairwise_abs_cosine(directions: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean |cos| over all task pairs and samples with a non-zero direction for both tasks.

    ``directions`` holds one (B, D) tensor per task. Returns ``(mean, per_pair_mean, n_valid)``
    where ``per_pair_mean`` is a (P,) tensor for the P = T(T−1)/2 pairs in ``(0,1), (0,2), …`` order.
    """
    if len(directions) < 2:
        raise ValueError(f"RLAR needs at least two tasks, got {len(directions)}")
    tiny = torch.finfo(torch.float32).tiny
    # Per-row rescaling by the largest entry keeps squares of tiny gradients out of the subnormal
    # range; the cosine is scale-invariant so this changes neither its value nor its gradient.
    scaled = []
    valid = []
    norms = []
    for d in directions:
        d = d.float()
        peak = d.detach().abs().amax(dim=1, keepdim=True)
        ok = peak.squeeze(1) > 0
        d = d / peak.clamp_min(tiny)
        scaled.append(d)
        valid.append(ok)
        norms.append((d * d).sum(dim=1).clamp_min(tiny).sqrt())
    total = scaled[0].new_zeros(())
    count = scaled[0].new_zeros(())
    pair_means = []
    for a in range(len(scaled)):
        for b in range(a + 1, len(scaled)):
            cos = (scaled[a] * scaled[b]).sum(dim=1) / (norms[a] * norms[b])
            mask = (valid[a] & valid[b]).float()
            pair_abs = cos.abs() * mask
            total = total + pair_abs.sum()
            count = count + mask.sum()
            pair_means.append(pair_abs.sum().detach() / mask.sum().clamp_min(1.0))
    mean = total / count.clamp_min(1.0)
    return mean, torch.stack(pair_means), count.detach()


def representation_gradients(loss: Tensor, targets: Sequence[Tensor]) -> list[Tensor]:
    """∇_z L with ``create_graph=True``; zeros where the loss does not reach ``z``."""
    if not loss.requires_grad:
        return [torch.zeros_like(z) for z in targets]
    grads = torch.autograd.grad(loss, list(targets), create_graph=True, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(z) if g is None else g for z, g in zip(targets, grads)]


def rlar_penalty(
    losses: Sequence[Tensor], representation: Tensor | Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """The unweighted RLAR penalty (Eq. 6 without λ_adv) and the per-pair mean |cos|."""
    targets = [representation] if isinstance(representation, Tensor) else list(representation)
    directions = [per_sample_directions(representation_gradients(loss, targets)) for loss in losses]
    mean, per_pair, _ = pairwise_abs_cosine(directions)
    return mean, per_pair


@register_method("rlar")
class RLAR(MultiTaskMethod):
    """Representation-level adversarial regulariser: penalise aligned task gradients in latent space."""

    Params = RLARParams
    needs = MethodNeeds(representation_grads=True)

    def validate(self) -> None:
        p = self.params
        if not p.lambda_adv >= 0:
            raise ValueError(f"Parameter `lambda_adv` should be >= 0. Found `lambda_adv = {p.lambda_adv}`.")
        if p.representation not in ("bottleneck", "last", "mid", "mean_last3"):
            raise ValueError(
                "Parameter `representation` should be one of bottleneck, last, mid, mean_last3. "
                f"Found `representation = {p.representation!r}`."
            )
        if len(self.task_names) < 2:
            raise ValueError(f"RLAR needs at least two tasks, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """λ_adv log-uniform over three decades; the probed representation (the paper's ablation)."""
        return {
            "lambda_adv": trial.suggest_float("lambda_adv", 1e-3, 1.0, log=True),
            "representation": trial.suggest_categorical(
                "representation", ["bottleneck", "last", "mid", "mean_last3"]
            ),
        }

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        rep = inputs.representation(self.params.representation)
        scaled_losses = [inputs.scale(inputs.losses[t]) for t in self.task_names]
        mean_abs_cos, per_pair = rlar_penalty(scaled_losses, rep)
        penalty = self.params.lambda_adv * mean_abs_cos
        total = inputs.weighted_sum() + penalty
        logs = {"loss": detach_float(total), "rlar_penalty": detach_float(penalty)}
        if inputs.diagnostics:
            # Where the penalty's gradient lands (methods.md: mostly on the heads for scalar heads).
            logs.update(gradient_norms(inputs.scale(penalty), inputs.parameter_groups, "rlar_grad_norm"))
            logs = {
                k: v / inputs.loss_scale if k.startswith("rlar_grad_norm/") else v for k, v in logs.items()
            }
        inputs.scale(total).backward()
        k = 0
        for a in range(len(self.task_names)):
            for b in range(a + 1, len(self.task_names)):
                logs[f"abs_cos/{self.task_names[a]}-{self.task_names[b]}"] = detach_float(per_pair[k])
                k += 1
        return logs
