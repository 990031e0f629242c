"""Rep-MTL — representation-level task saliency regularisation (Wang et al., ICCV 2025).

No official code is public; this follows ``methods.md`` (section "Representation-level
regularisers"). For each task t the saliency is the gradient of its loss with respect to the
shared representation z, ``S_t = ∇_z L_t`` (B×C×H'×W', taken with ``create_graph=True`` so that
both regularisers are differentiable). With N = H'W' and S_t[b] read as a C×N matrix:

* **TSR** (task-specific saliency regulation, an entropy): ``Ŝ_t = mean_c S_t`` (sign kept, B×H'×W'),
  ``P_{i,t} = |Ŝ_{i,t}| / (Σ_k |Ŝ_{i,k}| + eps)`` per location i (sample and pixel), and
  ``L_tsr = mean_i −Σ_t P_{i,t} log(P_{i,t} + eps)``, minimised.
* **CSA** (cross-task saliency alignment, contrastive): ``M_{t,b} = S_t[b] S_t[b]ᵀ`` (C×C), the anchor
  ``A_b = [mean_n S_1[b], …, mean_n S_T[b]]`` (C×T) and ``Â_b = A_b A_bᵀ``. With cosine similarity of
  the flattened matrices, positives ``p_{b,t} = cos(Â_b, M_{t,b})`` and negatives
  ``q_{b,k} = cos(Â_b, Â_k)`` for k ≠ b::

      L_csa = mean_{b,t} −log( exp(p_{b,t}/τ) / (exp(p_{b,t}/τ) + Σ_{k≠b} exp(q_{b,k}/τ)) )

  — standard InfoNCE, one positive per term with that positive in the denominator; every task of a
  sample is one positive term (τ is not given in the paper: a setting, default 0.1).

The objective is ``Σ_t λ_t L_t + λ_tsr·L_tsr + λ_csa·L_csa`` (``log_losses``: ``λ_t log(L_t + eps)``,
the DB-MTL protocol the paper trains with), minimised with one final backward.

Conventions pinned here:

* No C×C matrix is formed. ``⟨A Aᵀ, S Sᵀ⟩_F = ‖Aᵀ S‖_F²`` (T×N), ``⟨A_b A_bᵀ, A_k A_kᵀ⟩_F = ‖A_bᵀ A_k‖_F²``
  (T×T), ``‖A Aᵀ‖_F = ‖Aᵀ A‖_F`` (T×T) and ``‖S Sᵀ‖_F = ‖Sᵀ S‖_F`` computed by
  :func:`gram_frobenius_norm`: blocks of rows of the *smaller* Gram (N×N when N ≤ C, else C×C),
  never the whole matrix, with a hand-written backward ``∂‖SᵀS‖_F²/∂S = 4 S SᵀS`` built from the
  same blocks. Cost per sample and task: O(C·N·min(C, N)) time, O(block·max(C, N)) memory, no
  Gram kept for the backward. (Always using the N×N Gram would cost N² memory: 4096² per sample and
  task at the ``mid`` level of a 512 px nnU-Net.)
* The saliency is the gradient of the loss term being trained: ``∇_z log(L_t + eps)`` with
  ``log_losses`` (= ∇_z L_t / (L_t + eps)), ``∇_z L_t`` otherwise, without the weight λ_t.
* Both terms are invariant to a common positive scale of one sample's saliencies (all tasks alike).
  Each sample's saliencies are therefore divided by their largest magnitude (detached) before the
  math, which is done in float32: under fp16 the gradients of the *scaled* losses can be used
  unchanged, tiny per-pixel gradients stay out of the subnormal range, and ``eps`` is relative to
  the sample's largest saliency entry instead of an absolute number.
* Under fp16 the penalties' gradient is computed apart, as for RLAR (``rlar.penalised_backward``):
  its cotangent into the heads' second-order graph, ``∂(λ_tsr L_tsr + λ_csa L_csa)/∂S_t``, does not
  shrink with the loss scale, and fp16 double backward of InstanceNorm overflowed on it at every
  scale. It is computed in float32, sent through that graph scaled to a small power of two and the
  result rescaled in float32 — the same gradient.
* A task whose gradient is zero for a sample (missing target, or a loss that does not reach z)
  contributes P = 0 to that location's entropy and no CSA positive; a sample with no saliency at
  all contributes neither TSR locations, CSA anchor nor negative. With everything present this is
  exactly the formulas above. A batch of one sample has no negatives, so its CSA is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mtlbench.api.method import MethodNeeds, MultiTaskMethod, SecondOrderLayers, StepInputs, detach_float
from mtlbench.registry import register_method

from .rlar import float32_representation_gradients, penalised_backward

Representation = Literal["bottleneck", "last", "mid"]
REPRESENTATIONS: tuple[str, ...] = ("bottleneck", "last", "mid")

# Elements of one Gram block (over the flattened batch); bounds the memory of gram_frobenius_norm.
GRAM_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RepMTLParams:
    """Rep-MTL hyper-parameters."""

    lambda_tsr: float = 1.0
    lambda_csa: float = 1.0
    temperature: float = 0.1
    representation: Representation = "bottleneck"
    log_losses: bool = False
    eps: float = 1e-8


def _gram_blocks(s: Tensor) -> tuple[bool, int]:
    """Whether to use the N×N Gram (``SᵀS``) rather than ``SSᵀ``, and the block height."""
    batch = max(1, s[..., 0, 0].numel())
    c, n = s.shape[-2:]
    use_cols = n <= c
    width = n if use_cols else c
    return use_cols, max(1, GRAM_BLOCK_ELEMENTS // (batch * max(width, 1)))


class _GramFrobeniusSq(torch.autograd.Function):
    """‖Sᵀ S‖_F² = ‖S Sᵀ‖_F² for a batch of C×N matrices, blockwise through the smaller Gram."""

    @staticmethod
    def forward(ctx: Any, s: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(s)
        use_cols, block = _gram_blocks(s)
        out = s.new_zeros(s.shape[:-2])
        if use_cols:  # rows of SᵀS: S[:, K]ᵀ S  (k×N)
            for k in range(0, s.shape[-1], block):
                g = s[..., :, k : k + block].transpose(-1, -2) @ s
                out = out + g.square().sum((-2, -1))
        else:  # rows of SSᵀ: S[K, :] Sᵀ  (k×C)
            for k in range(0, s.shape[-2], block):
                g = s[..., k : k + block, :] @ s.transpose(-1, -2)
                out = out + g.square().sum((-2, -1))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (s,) = ctx.saved_tensors
        use_cols, block = _gram_blocks(s)
        grad = torch.empty_like(s)
        if use_cols:  # columns of S (SᵀS): S (Sᵀ S[:, K])
            for k in range(0, s.shape[-1], block):
                grad[..., :, k : k + block] = s @ (s.transpose(-1, -2) @ s[..., :, k : k + block])
        else:  # rows of (SSᵀ) S: (S[K, :] Sᵀ) S
            for k in range(0, s.shape[-2], block):
                grad[..., k : k + block, :] = (s[..., k : k + block, :] @ s.transpose(-1, -2)) @ s
        return grad * (4.0 * grad_out)[..., None, None]


def gram_frobenius_norm(s: Tensor) -> Tensor:
    """‖S Sᵀ‖_F for a (..., C, N) batch without forming S Sᵀ (see the module docstring for the cost).

    Differentiable once (enough for the final backward of a second-order objective).
    """
    return _GramFrobeniusSq.apply(s).clamp_min(torch.finfo(s.dtype).tiny).sqrt()


def _rescale_per_sample(saliency: Tensor) -> Tensor:
    """float32 (T, B, C, N) saliency divided per sample by its largest magnitude over all tasks."""
    s = saliency.float()
    peak = s.detach().abs().amax(dim=(0, 2, 3), keepdim=True)
    return s / peak.clamp_min(torch.finfo(torch.float32).tiny)


def tsr_entropy(saliency: Tensor, eps: float = 1e-8) -> Tensor:
    """L_tsr: mean over locations of −Σ_t P log(P + eps), P from the channel-mean saliency.

    ``saliency`` is (T, B, C, N). Locations where every task's channel mean is exactly zero carry no
    distribution and are left out of the mean.
    """
    mean_c = saliency.mean(dim=2).abs()  # (T, B, N)
    total = mean_c.sum(dim=0)  # (B, N)
    p = mean_c / (total + eps)
    entropy = -(p * torch.log(p + eps)).sum(dim=0)
    valid = (total.detach() > 0).float()
    return (entropy * valid).sum() / valid.sum().clamp_min(1.0)


def csa_infonce(saliency: Tensor, temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """L_csa (InfoNCE over anchors Â_b, positives M_{t,b}, negatives Â_k) and the mean positive cosine.

    ``saliency`` is (T, B, C, N); all cosines use the Frobenius identities, no C×C matrix is built.
    """
    t_count, b_count = saliency.shape[:2]
    tiny = torch.finfo(saliency.dtype).tiny
    anchor = saliency.mean(dim=3).permute(1, 2, 0)  # A: (B, C, T)
    # ‖AᵀA‖_F: (B,); clamped before the root so an all-zero anchor has a zero, not NaN, gradient
    anchor_norm = (anchor.transpose(1, 2) @ anchor).square().sum((1, 2)).clamp_min(tiny).sqrt()
    task_norm = gram_frobenius_norm(saliency)  # ‖S Sᵀ‖_F: (T, B)
    # ⟨A_b A_bᵀ, S_t[b] S_t[b]ᵀ⟩ = ‖A_bᵀ S_t[b]‖_F²
    a_ts = torch.einsum("bcs,tbcn->tbsn", anchor, saliency).square().sum((2, 3))  # (T, B)
    pos = a_ts / (anchor_norm[None] * task_norm).clamp_min(tiny)
    # ⟨A_b A_bᵀ, A_k A_kᵀ⟩ = ‖A_bᵀ A_k‖_F²
    a_aa = torch.einsum("bcs,kcu->bksu", anchor, anchor).square().sum((2, 3))  # (B, B)
    neg = a_aa / (anchor_norm[:, None] * anchor_norm[None, :]).clamp_min(tiny)

    has_anchor = anchor.detach().abs().amax(dim=(1, 2)) > 0
    pos_ok = (saliency.detach().abs().amax(dim=(2, 3)) > 0) & has_anchor[None]  # (T, B)
    neg_ok = (
        has_anchor[:, None] & has_anchor[None, :] & ~torch.eye(b_count, dtype=torch.bool, device=neg.device)
    )
    neg_logits = (neg / temperature).masked_fill(~neg_ok, float("-inf"))  # (B, B)
    pos_logits = pos / temperature  # (T, B)
    denom = torch.logsumexp(
        torch.cat([pos_logits[..., None], neg_logits[None].expand(t_count, -1, -1)], dim=2), dim=2
    )
    terms = (denom - pos_logits) * pos_ok.float()
    count = pos_ok.float().sum().clamp_min(1.0)
    mean_pos = (pos.detach() * pos_ok.float()).sum() / count
    return terms.sum() / count, mean_pos


def stack_saliency(grads: Sequence[Tensor]) -> Tensor:
    """T per-task (B, C, ...) gradients → float32 (T, B, C, N), rescaled per sample."""
    flat = torch.stack([g.flatten(2) if g.dim() > 2 else g[..., None] for g in grads])
    return _rescale_per_sample(flat)


def rep_mtl_penalties_from_gradients(
    grads: Sequence[Tensor], temperature: float = 0.1, eps: float = 1e-8
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_tsr, L_csa, mean positive cosine)`` from each task's ``∇_z`` of its loss term."""
    if len(grads) < 2:
        raise ValueError(f"Rep-MTL needs at least two tasks, got {len(grads)}")
    with torch.autocast(grads[0].device.type, enabled=False):
        saliency = stack_saliency(grads)
        tsr = tsr_entropy(saliency, eps)
        csa, mean_pos = csa_infonce(saliency, temperature)
    return tsr, csa, mean_pos


def rep_mtl_penalties(
    losses: Sequence[Tensor], representation: Tensor, temperature: float = 0.1, eps: float = 1e-8
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_tsr, L_csa, mean positive cosine)`` for the task loss terms and the probed representation."""
    if len(losses) < 2:
        raise ValueError(f"Rep-MTL needs at least two tasks, got {len(losses)}")
    grads = [g for (g,) in float32_representation_gradients(losses, representation)]
    return rep_mtl_penalties_from_gradients(grads, temperature, eps)


@register_method("rep_mtl")
class RepMTL(MultiTaskMethod):
    """Rep-MTL: task-saliency entropy and cross-task contrastive alignment on the shared representation."""

    Params = RepMTLParams
    needs = MethodNeeds(representation_grads=True, second_order=True)

    def validate(self) -> None:
        p = self.params
        for name in ("lambda_tsr", "lambda_csa"):
            value = getattr(p, name)
            if not value >= 0:
                raise ValueError(f"Parameter `{name}` should be >= 0. Found `{name} = {value}`.")
        for name in ("temperature", "eps"):
            value = getattr(p, name)
            if not value > 0:
                raise ValueError(f"Parameter `{name}` should be > 0. Found `{name} = {value}`.")
        if p.representation not in REPRESENTATIONS:
            raise ValueError(
                f"Parameter `representation` should be one of {', '.join(REPRESENTATIONS)}. "
                f"Found `representation = {p.representation!r}`."
            )
        if len(self.task_names) < 2:
            raise ValueError(f"Rep-MTL needs at least two tasks, got {self.task_names}")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Optuna suggestions: λ_tsr, λ_csa in the paper's stable range 0.7–1.5, τ log-uniform."""
        return {
            "lambda_tsr": trial.suggest_float("lambda_tsr", 0.7, 1.5),
            "lambda_csa": trial.suggest_float("lambda_csa", 0.7, 1.5),
            "temperature": trial.suggest_float("temperature", 0.03, 1.0, log=True),
        }

    def task_terms(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The per-task objective terms: ``L_t`` or, with ``log_losses``, ``log(L_t + eps)``."""
        if not self.params.log_losses:
            return {t: losses[t] for t in self.task_names}
        return {t: torch.log(losses[t].float() + self.params.eps) for t in self.task_names}

    def second_order_layers(self, step: int) -> SecondOrderLayers:
        """The heads only when the bottleneck is probed."""
        return "heads" if self.params.representation == "bottleneck" else "all"

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        p = self.params
        rep = inputs.representation(p.representation)
        if not isinstance(rep, Tensor):
            raise TypeError(f"Rep-MTL probes one tensor; representation {p.representation!r} is a list")
        terms = self.task_terms(inputs.losses)
        scaled_terms = [inputs.scale(terms[t]) for t in self.task_names]
        with inputs.phase("representation gradients"):
            grads = [g for (g,) in float32_representation_gradients(scaled_terms, rep)]
            tsr, csa, mean_pos = rep_mtl_penalties_from_gradients(grads, p.temperature, p.eps)
        tasks = sum(inputs.weights[t] * terms[t] for t in self.task_names)
        penalty = p.lambda_tsr * tsr + p.lambda_csa * csa
        logs = {
            "loss": detach_float(tasks + penalty),
            "rep_mtl/tsr": detach_float(tsr),
            "rep_mtl/csa": detach_float(csa),
            "rep_mtl/pos_cos": detach_float(mean_pos),
        }
        # with diagnostics: where the penalty's gradient lands, per module
        with inputs.phase("objective and second-order backward"):
            logs.update(penalised_backward(inputs, tasks, penalty, grads, rep, "rep_mtl_grad_norm"))
        return logs
