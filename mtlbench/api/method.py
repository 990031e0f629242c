"""The interface every multitask method implements.

A method never reaches into the trainer or the model: the trainer hands it a :class:`StepInputs`
(task losses, their configured weights, the shared parameters, the named shared representations,
the step number and the loss-scaling function) and the method owns the backward pass — it fills
``.grad`` on the parameters and returns scalar diagnostics to log. Hyper-parameters come from a
dataclass ``Params`` validated from the run configuration; learnable state (if any) lives in the
module and is checkpointed with the run through ``state_dict()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

#: See :meth:`MultiTaskMethod.second_order_layers`.
SecondOrderLayers = Literal["none", "heads", "all"]


@dataclass(frozen=True)
class MethodNeeds:
    """What the trainer must provide beyond the task losses (it computes only that)."""

    representation_grads: bool = False
    shared_grads: bool = False
    extra_forward: bool = False
    #: The method differentiates gradients again (``create_graph=True``): the trainer runs the model
    #: with its layers' own double backward (:mod:`mtlbench.second_order`), off otherwise.
    second_order: bool = False


@dataclass(frozen=True)
class NoParams:
    """A method without hyper-parameters."""


def _identity(loss: Tensor) -> Tensor:
    return loss


#: ``indices`` (of the batch the step was given) → ``(losses, representations)`` of the heads on those
#: samples only: the forward's own subset when it ran those apart, else the heads re-run on them.
SubsetForward = Callable[[Tensor], tuple[dict[str, Tensor], dict[str, Tensor | list[Tensor]]]]


@contextlib.contextmanager
def no_phase(name: str) -> Iterator[None]:
    """The default phase timer: does nothing (``mtlbench bench`` passes one that records)."""
    yield


@dataclass
class StepInputs:
    """Everything a method may use in one optimisation step.

    ``losses`` are the un-weighted task losses (scalar tensors, still attached to the graph) and
    ``weights`` the task's configured λ_t. ``shared_parameters`` are the backbone's trainable
    parameters in module order (the last ones belong to the deepest stage); ``head_parameters``
    everything else that the model trains. ``scale`` multiplies a loss by the current fp16 loss
    scale and ``loss_scale`` is that factor (both identity/1.0 without fp16): gradients taken of
    ``scale(loss)`` are ``loss_scale`` times too large, and a method whose result is not
    proportional to its input gradients must divide by it first.
    """

    losses: dict[str, Tensor]
    weights: dict[str, float]
    shared_parameters: Sequence[nn.Parameter]
    representations: dict[str, Tensor | list[Tensor]]
    step: int
    scale: Callable[[Tensor], Tensor] = _identity
    head_parameters: Sequence[nn.Parameter] = ()
    loss_scale: float = 1.0
    #: True on the steps where methods should add their (costly) diagnostics to the logs.
    diagnostics: bool = False
    #: Named parameter groups for per-module diagnostics: ``encoder`` and ``head/<name>``.
    parameter_groups: dict[str, Sequence[nn.Parameter]] = field(default_factory=dict)
    #: ``with inputs.phase("task gradients"): ...`` names a part of the step for ``mtlbench bench``'s
    #: breakdown of where the time goes (a no-op in training).
    phase: Callable[[str], contextlib.AbstractContextManager[None]] = no_phase
    #: The tensors the heads consumed (views, or float32 copies, of the backbone's feature maps): a
    #: gradient with respect to them stops at the heads, one pushed from them continues into the
    #: backbone. Empty where the caller did not run the heads on such cut points.
    head_inputs: Sequence[Tensor] = ()
    #: ``subset_forward(indices)`` returns ``(losses, representations)`` of the heads and losses on
    #: those samples of the batch only, attached to the graph through slices of the backbone's
    #: features. For the indices the method named in :meth:`MultiTaskMethod.subset_for_step` the
    #: trainer already ran them in the step's forward (no extra work); others are run on demand.
    #: ``None`` where the caller has no model at hand.
    subset_forward: SubsetForward | None = None

    def representation(self, name: str) -> Tensor | list[Tensor]:
        """The named shared representation; a clear error if the model does not provide it."""
        if name not in self.representations:
            raise KeyError(
                f"representation {name!r} is not provided by the model "
                f"(has: {', '.join(self.representations)})"
            )
        return self.representations[name]

    def weighted_sum(self) -> Tensor:
        """Σ_t λ_t L_t with the task's configured weights."""
        return sum(self.weights[name] * loss for name, loss in self.losses.items())  # type: ignore[return-value]


class MultiTaskMethod(nn.Module):
    """Base class. Subclasses set ``Params``/``needs`` and implement :meth:`backward`."""

    Params: ClassVar[type] = NoParams
    needs: ClassVar[MethodNeeds] = MethodNeeds()

    def __init__(self, task_names: Sequence[str], params: Any = None) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.params = params if params is not None else self.Params()
        self.validate()

    def validate(self) -> None:
        """Reject bad hyper-parameters before training; raise ``ValueError`` naming the value."""

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Optuna suggestions for the hyper-parameters (``trial.suggest_*``); none by default."""
        return {}

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        """Fill ``.grad`` of the parameters for this step; return diagnostics (floats)."""
        raise NotImplementedError

    def second_order_layers(self, step: int) -> SecondOrderLayers:
        """Which layers this step's :meth:`backward` differentiates twice, so that the trainer runs
        them with their own second-order kernels (:mod:`mtlbench.second_order`) and every other
        layer as PyTorch's, without the kernels' per-layer Python cost: ``"none"``, ``"heads"``
        (gradients with respect to the backbone's deepest level, which only the heads read) or
        ``"all"``. A speed hint only: every layer is exact either way. By default ``"all"`` for
        methods with ``needs.second_order``, else ``"none"``."""
        return "all" if self.needs.second_order else "none"

    def subset_for_step(self, step: int, batch_size: int) -> Tensor | None:
        """The samples (sorted indices) whose losses :meth:`backward` will ask for through
        ``StepInputs.subset_forward`` at ``step``, or ``None`` (the default).

        Called before the forward: the trainer then runs the heads on those samples apart from the
        rest and puts the outputs back together for the whole batch's losses, so the subset's
        losses come with the forward instead of a second run of the heads.
        """
        return None

    def after_step(self, recompute_losses: Callable[[], dict[str, Tensor]]) -> dict[str, float]:
        """Called after the optimizer step when ``needs.extra_forward``; ``recompute_losses()``
        evaluates the task losses again on the same batch without gradient (FAMO)."""
        return {}

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        """Called after each training epoch with the epoch-mean un-weighted task losses (DWA)."""

    def extra_repr(self) -> str:
        fields = dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else {}
        return ", ".join(f"{k}={v!r}" for k, v in fields.items())


def gradient_norms(loss: Tensor, groups: dict[str, Sequence[nn.Parameter]], prefix: str) -> dict[str, float]:
    """‖∂loss/∂θ‖ per named parameter group, keyed ``<prefix>/<group>`` (graph retained)."""
    out = {}
    for name, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if not params or not loss.requires_grad:
            out[f"{prefix}/{name}"] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
        out[f"{prefix}/{name}"] = sq**0.5
    return out


def detach_float(value: Tensor) -> float:
    return float(value.detach().float().cpu())


def check_finite_losses(losses: dict[str, Tensor]) -> None:
    bad = {k: detach_float(v) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
    if bad:
        raise FloatingPointError(f"non-finite task loss: {bad}")
