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
* Under fp16 the penalty's own gradient is computed apart (:func:`penalised_backward`): the
  cotangent it sends into the heads' second-order graph, ``∂L_RLAR/∂(∇_z L)``, is about
  ``λ_adv/‖∇_z L‖`` whatever the loss scale, and fp16 double backward of InstanceNorm multiplies it
  by the pixels per channel — so a single scaled backward overflowed at every loss scale. It is
  computed in float32 and pushed through that graph scaled to a small power of two
  (``SECOND_ORDER_COTANGENTS``), and the result is rescaled in float32: the same gradient, with no
  fp16 value out of range. fp32 and bf16 keep the single backward.
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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlbench import distributed
from mtlbench.api.checks import check_param
from mtlbench.api.gradients import step_generator
from mtlbench.api.method import (
    MethodNeeds,
    MultiTaskMethod,
    SecondOrderLayers,
    StepInputs,
    detach_float,
    gradient_norms,
)
from mtlbench.registry import register_method

Representation = Literal["bottleneck", "last", "mid", "mean_last3"]
_UNSET = -1


@dataclass(frozen=True)
class RLARParams:
    """RLAR hyper-parameters.

    ``every`` and ``subset`` are opt-in cheaper estimates, not the paper's method (both off by
    default): the penalty on every ``every``-th step only, times ``every`` (lazy regularisation, as
    StyleGAN2's R1: the same penalty gradient on average over steps); and the penalty of a random
    ``subset`` of the batch's samples, whose heads and losses the trainer runs apart from the other
    samples' in the step's forward (:meth:`RLAR.subset_for_step`), so that only their graph is
    differentiated twice.
    """

    lambda_adv: float = 0.1
    representation: Representation = "bottleneck"
    every: int = 1
    subset: int | None = None
    #: The generator of the subset draws (``None``: the run's torch seed, fixed at the first step).
    seed: int | None = None


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
    # torchrun: the pair count of the global batch (distributed.batch_normaliser), so the ranks average
    # to the global batch's penalty and gradient whatever pairs each shard holds
    mean = total / distributed.batch_normaliser(count).clamp_min(1.0)
    return mean, torch.stack(pair_means), count.detach()


def representation_gradients(loss: Tensor, targets: Sequence[Tensor]) -> list[Tensor]:
    """∇_z L with ``create_graph=True``; zeros where the loss does not reach ``z``."""
    if not loss.requires_grad:
        return [torch.zeros_like(z) for z in targets]
    grads = torch.autograd.grad(loss, list(targets), create_graph=True, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(z) if g is None else g for z, g in zip(targets, grads)]


def float32_representation_gradients(
    losses: Sequence[Tensor], representation: Tensor | Sequence[Tensor]
) -> list[list[Tensor]]:
    """Per loss, ``∇_z L`` for every probed level as float32 (``create_graph=True``), outside autocast.

    These float32 copies are the only way a representation-level penalty depends on the parameters;
    :func:`penalised_backward` differentiates through them.
    """
    targets = [representation] if isinstance(representation, Tensor) else list(representation)
    with torch.autocast(targets[0].device.type, enabled=False):
        return [[g.float() for g in representation_gradients(loss, targets)] for loss in losses]


def rlar_penalty_from_gradients(grads: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
    """The unweighted RLAR penalty and per-pair mean |cos| from each task's ``∇_z L`` levels."""
    mean, per_pair, _ = pairwise_abs_cosine([per_sample_directions(g) for g in grads])
    return mean, per_pair


def rlar_penalty(
    losses: Sequence[Tensor], representation: Tensor | Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """The unweighted RLAR penalty (Eq. 6 without λ_adv) and the per-pair mean |cos|."""
    return rlar_penalty_from_gradients(float32_representation_gradients(losses, representation))


#: Largest |cotangent| sent into the heads' fp16 second-order graph by :func:`penalty_parameter_gradients`,
#: tried in order until the result is finite. fp16 double backward multiplies it by, e.g., InstanceNorm's
#: pixels per channel (2^12 at 64 px, 2^18 at 512 px), so it must be small; but entries more than 2^12
#: below it are subnormal and lose digits (2^-6 first: 1.7 % error in RLAR's penalty gradient on the
#: test net, against 0.14 % at 2^-2 and 2^0).
SECOND_ORDER_COTANGENTS = (2.0**-2, 2.0**-8, 2.0**-14)


def needs_separate_penalty_pass(inputs: StepInputs, representation: Tensor | Sequence[Tensor]) -> bool:
    """fp16 (a loss scale, or a half-precision representation): the penalty gets its own pass."""
    levels = [representation] if isinstance(representation, Tensor) else list(representation)
    return inputs.loss_scale != 1.0 or any(z.dtype == torch.float16 for z in levels)


def penalty_parameter_gradients(
    penalty: Tensor, grads: Sequence[Tensor], parameters: Sequence[nn.Parameter]
) -> list[Tensor | None]:
    """``∂penalty/∂θ`` (float32) for a penalty that depends on θ only through the float32 ``grads``.

    ``c = ∂penalty/∂grads`` is computed in float32, scaled by a power of two ``κ`` so that its largest
    entry is the first of :data:`SECOND_ORDER_COTANGENTS` (the next ones if the result overflows),
    pushed through the (fp16) graph of ``grads`` and the result divided by ``κ`` in float32. With
    exact arithmetic this is the gradient itself; in fp16 no intermediate depends on the size of
    ``c`` (≈ 1/‖∇_z L‖, unbounded), only on the loss scale, which the GradScaler controls. The graph
    is retained.
    """
    attached = [g for g in grads if g.requires_grad]
    if not attached or not penalty.requires_grad:
        return [None] * len(parameters)
    cotangents = torch.autograd.grad(penalty, attached, retain_graph=True, allow_unused=True)
    pairs = [(g, c) for g, c in zip(attached, cotangents) if c is not None]
    if not pairs:
        return [None] * len(parameters)
    peak = max(float(c.detach().abs().max()) for _, c in pairs)
    if peak == 0.0:
        return [None] * len(parameters)
    out: list[Tensor | None] = []
    for target in SECOND_ORDER_COTANGENTS if math.isfinite(peak) else (peak,):
        # A non-finite cotangent is passed on as is: the GradScaler sees it and skips the step.
        kappa = 2.0 ** math.floor(math.log2(target / peak)) if math.isfinite(peak) else 1.0
        result = torch.autograd.grad(
            [g for g, _ in pairs],
            list(parameters),
            grad_outputs=[c * kappa for _, c in pairs],
            retain_graph=True,
            allow_unused=True,
        )
        out = [None if g is None else g.float() / kappa for g in result]
        if all(g is None or bool(torch.isfinite(g).all()) for g in out):
            break
    return out


def trained_parameters(inputs: StepInputs) -> list[nn.Parameter]:
    """Shared then head parameters that require a gradient, each once."""
    seen: set[int] = set()
    out = []
    for p in (*inputs.shared_parameters, *inputs.head_parameters):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def penalised_backward(
    inputs: StepInputs,
    objective: Tensor,
    penalty: Tensor,
    grads: Sequence[Tensor],
    representation: Tensor | Sequence[Tensor],
    diagnostics_prefix: str,
) -> dict[str, float]:
    """Accumulate ``∂ scale(objective + penalty)/∂θ`` into ``.grad``; return diagnostics.

    ``penalty`` depends on the parameters only through the float32 representation gradients
    ``grads`` (taken of the *scaled* losses). In fp32 and bf16 this is one backward. Under fp16 the
    penalty's gradient comes from :func:`penalty_parameter_gradients` on ``shared_parameters`` and
    ``head_parameters`` (which must then list every trained parameter, as the trainer's do) and is
    added, times the loss scale, after the ordinary backward of the scaled objective. With
    ``inputs.diagnostics`` the norm of the penalty's gradient per parameter group is returned as
    ``<diagnostics_prefix>/<group>`` (unscaled).
    """
    logs: dict[str, float] = {}
    if not needs_separate_penalty_pass(inputs, representation):
        if inputs.diagnostics:
            norms = gradient_norms(inputs.scale(penalty), inputs.parameter_groups, diagnostics_prefix)
            logs = {k: v / inputs.loss_scale for k, v in norms.items()}
        inputs.scale(objective + penalty).backward()
        return logs
    params = trained_parameters(inputs)
    penalty_grads = penalty_parameter_gradients(penalty, grads, params)
    if inputs.diagnostics:
        by_id = {id(p): g for p, g in zip(params, penalty_grads)}
        for name, group in inputs.parameter_groups.items():
            sq = sum(float(by_id[id(p)].pow(2).sum()) for p in group if by_id.get(id(p)) is not None)
            logs[f"{diagnostics_prefix}/{name}"] = sq**0.5
    inputs.scale(objective).backward()
    for p, g in zip(params, penalty_grads):
        if g is None:
            continue
        g = (g * inputs.loss_scale).to(p.dtype)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)
    return logs


@register_method("rlar")
class RLAR(MultiTaskMethod):
    """Representation-level adversarial regulariser: penalise aligned task gradients in latent space."""

    Params = RLARParams
    needs = MethodNeeds(representation_grads=True, second_order=True)

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__(task_names, params)
        seed = _UNSET if self.params.seed is None else int(self.params.seed)
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.long))

    def validate(self) -> None:
        p = self.params
        check_param("every", p.every, "int", low=1)
        check_param("subset", p.subset, "int", low=1, allow_none=True)
        check_param("seed", p.seed, "int", low=0, allow_none=True)
        if p.subset is not None and p.representation != "bottleneck":
            # the heads re-run on slices of the features: below the bottleneck, ∇_z L of a slice
            # would miss the path through the deeper encoder stages
            raise ValueError(
                "Parameter `subset` needs `representation = 'bottleneck'`. "
                f"Found `representation = {p.representation!r}`."
            )
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

    def subset_indices(self, step: int, batch_size: int) -> Tensor:
        """The ``subset`` samples whose penalty is taken at ``step`` (seeded by (seed, step))."""
        if int(self.seed) == _UNSET:
            self.seed.fill_(torch.initial_seed() % 2**62)
        order = torch.randperm(batch_size, generator=step_generator(int(self.seed), step))
        return order[: self.params.subset].sort().values

    def second_order_layers(self, step: int) -> SecondOrderLayers:
        """None on the off-steps of ``every``; the heads only when the bottleneck is probed."""
        p = self.params
        if p.every > 1 and step % p.every:
            return "none"
        return "heads" if p.representation == "bottleneck" else "all"

    def subset_for_step(self, step: int, batch_size: int) -> Tensor | None:
        """With ``subset``: this step's samples, so the trainer runs their heads apart in the forward
        and their losses cost no second run of the heads."""
        p = self.params
        if p.subset is None or p.subset >= batch_size or (p.every > 1 and step % p.every):
            return None
        return self.subset_indices(step, batch_size)

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        p = self.params
        objective = inputs.weighted_sum()
        if p.every > 1 and inputs.step % p.every:
            with inputs.phase("objective backward"):
                inputs.scale(objective).backward()
            return {"loss": detach_float(objective)}
        losses, representations = inputs.losses, inputs.representations
        rep = inputs.representation(p.representation)
        batch_size = (rep if isinstance(rep, Tensor) else rep[0]).shape[0]
        if p.subset is not None and p.subset < batch_size:
            if inputs.subset_forward is None:
                raise RuntimeError(
                    "RLAR with `subset` needs StepInputs.subset_forward (the trainer provides it)"
                )
            with inputs.phase("subset forward"):
                indices = self.subset_indices(inputs.step, batch_size).to(objective.device)
                losses, representations = inputs.subset_forward(indices)
            rep = representations[p.representation]
        with inputs.phase("representation gradients"):
            scaled_losses = [inputs.scale(losses[t]) for t in self.task_names]
            grads = float32_representation_gradients(scaled_losses, rep)
            mean_abs_cos, per_pair = rlar_penalty_from_gradients(grads)
        penalty = p.lambda_adv * p.every * mean_abs_cos
        logs = {"loss": detach_float(objective + penalty), "rlar_penalty": detach_float(penalty)}
        # Where the penalty's gradient lands (methods.md: mostly on the heads for scalar heads).
        flat = [g for levels in grads for g in levels]
        with inputs.phase("objective and second-order backward"):
            logs.update(penalised_backward(inputs, objective, penalty, flat, rep, "rlar_grad_norm"))
        k = 0
        for a in range(len(self.task_names)):
            for b in range(a + 1, len(self.task_names)):
                logs[f"abs_cos/{self.task_names[a]}-{self.task_names[b]}"] = detach_float(per_pair[k])
                k += 1
        return logs
