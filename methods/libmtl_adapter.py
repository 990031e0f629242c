"""Run any LibMTL weighting strategy (``LibMTL.weighting.<Name>``) inside the mtlbench trainer.

A LibMTL weighting is written as a mixin of LibMTL's model: its ``backward(losses, **kwargs)``
reaches for ``self.get_share_params()``, ``self.zero_grad_share_params()``, ``self.task_num``,
``self.task_name``, ``self.device``, ``self.rep_grad``, ``self.epoch`` and
``self.train_loss_buffer``. The adapter builds a small *bridge*, a subclass of the weighting that
supplies exactly these from :class:`StepInputs` (shared parameters, their device, the task names)
and from :meth:`on_epoch_end` (the epoch counter and the T×epochs buffer of epoch-mean training
losses), and calls ``backward(torch.stack([λ_t L_t]), **kwargs)``. Learnable weights created by a
weighting's ``init_param`` (UW, GradNorm, IMTL) are parameters of this module, so the trainer
optimises and checkpoints them; the epoch buffer is checkpointed through ``get_extra_state``.

Gradients. LibMTL back-propagates each task loss through the whole model and keeps the shared
parameters' gradients per task, then overwrites the shared ``.grad`` with its combination. The
heads therefore receive their ordinary gradient of Σ_t λ_t L_t from gradient-combination
weightings (PCGrad, CAGrad, MGDA, GradVac) and the weighting's own loss weights from
loss-weighting ones (EW, UW, DWA, RLW, GLS) — each head exactly once. Gradients already present
on the parameters are kept and added to (the adapter parks the shared ones during the call).

Limitations inherited from LibMTL 1.1.5 (not patched here):

* Per-task shared gradients are copied through host memory (``_grad2vec`` builds a CPU vector);
  the LibMTL trainer fixes ``cuda:0``, the adapter instead passes the shared parameters' device,
  which makes CPU and any GPU work.
* Only parameter gradients are supported (``rep_grad=False``): GradDrop, which needs
  representation gradients, is rejected.
* ``CAGrad``'s objective hard-codes three tasks (``reshape(1, 3)``); other task counts are rejected.
* ``MGDA`` (for three or more tasks) returns ``None`` when its 250 Frank–Wolfe iterations do not
  converge; the adapter raises then. ``RLW`` with ``dist="constrained_Bernoulli"`` fails inside
  LibMTL (``random`` is not imported there).
* Randomness comes from global generators (``random`` in PCGrad/GradVac, ``torch`` in RLW/GradDrop),
  so seed them globally for reproducible runs. GradVac's EMA state is not checkpointed.
* No fp16 loss scaling except for weightings whose result is proportional to the loss scale
  (EW, DWA, RLW, GLS, PCGrad, GradVac, CAGrad, MGDA with ``mgda_gn="none"``): those receive the
  scaled losses; the others raise (use bf16 or fp32).
* CAGrad here is LibMTL's: mean-based and without the ×T of the official code (see ``methods.md``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlbench.api.method import MultiTaskMethod, StepInputs, detach_float
from mtlbench.libmtl_compat import import_libmtl
from mtlbench.registry import register_method

#: Keyword arguments each LibMTL weighting reads, with LibMTL's own defaults (``LibMTL/config.py``).
LIBMTL_KWARGS: dict[str, dict[str, Any]] = {
    "EW": {},
    "UW": {},
    "GLS": {},
    "PCGrad": {},
    "IMTL": {},
    "DWA": {"T": 2.0},
    "GradNorm": {"alpha": 1.5},
    "MGDA": {"mgda_gn": "none"},
    "GradVac": {"beta": 0.5},
    "CAGrad": {"calpha": 0.5, "rescale": 1},
    "RLW": {"dist": "Normal"},
}
_UNSUPPORTED = {
    "GradDrop": "it needs representation gradients (rep_grad=True), which the adapter does not provide"
}
_FP16_SAFE = {"EW", "DWA", "RLW", "GLS", "PCGrad", "GradVac", "CAGrad"}


def libmtl_weighting_names() -> list[str]:
    """The weighting classes exported by the installed ``LibMTL.weighting``."""
    module = import_libmtl("weighting")
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    base = module.AbsWeighting
    return sorted(
        n
        for n in names
        if isinstance(getattr(module, n, None), type)
        and issubclass(getattr(module, n), base)
        and n != "AbsWeighting"
    )


def make_bridge(weighting_cls: type, task_names: list[str]) -> Any:
    """An instance of ``weighting_cls`` extended with the model attributes LibMTL expects."""

    class Bridge(weighting_cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_name = list(task_names)
            self.task_num = len(task_names)
            self.device = torch.device("cpu")
            self.rep_grad = False
            self.multi_input = False
            self.epoch = 0
            self.train_loss_buffer = np.zeros((self.task_num, 0))
            self.shared: list[torch.nn.Parameter] = []

        def get_share_params(self) -> list[torch.nn.Parameter]:
            return self.shared

        def zero_grad_share_params(self) -> None:
            for p in self.shared:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.zero_()

    Bridge.__name__ = Bridge.__qualname__ = f"LibMTLBridge_{weighting_cls.__name__}"
    bridge = Bridge()
    bridge.init_param()
    return bridge


@dataclass(frozen=True)
class LibMTLParams:
    """LibMTL adapter hyper-parameters: the weighting class name and its keyword arguments."""

    weighting: str = "EW"
    kwargs: dict[str, Any] = field(default_factory=dict)


@register_method("libmtl")
class LibMTLAdapter(MultiTaskMethod):
    """Any LibMTL weighting strategy (LibMTL.weighting.<Name>) run through a bridge to our step inputs."""

    Params = LibMTLParams

    def __init__(self, task_names: Any, params: Any = None) -> None:
        super().__init__(task_names, params)
        module = import_libmtl("weighting")
        self.weighting = make_bridge(getattr(module, self.params.weighting), list(self.task_names))
        defaults = LIBMTL_KWARGS.get(self.params.weighting, {})
        self.kwargs = {**defaults, **{k: self._coerce(k, v, defaults) for k, v in self.params.kwargs.items()}}

    @staticmethod
    def _coerce(key: str, value: Any, defaults: dict[str, Any]) -> Any:
        """Convert command-line text to the type of LibMTL's default for ``key``."""
        if key not in defaults or not isinstance(value, str):
            return value
        kind = type(defaults[key])
        try:
            return kind(value) if kind is not str else value
        except ValueError:
            raise ValueError(
                f"Parameter `kwargs.{key}` should be a {kind.__name__}. Found `kwargs.{key} = {value!r}`."
            ) from None

    def validate(self) -> None:
        p = self.params
        known = libmtl_weighting_names()
        if p.weighting not in known:
            close = difflib.get_close_matches(p.weighting, known, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"Parameter `weighting` should be a LibMTL weighting ({', '.join(known)}). "
                f"Found `weighting = {p.weighting!r}`.{hint}"
            )
        if p.weighting in _UNSUPPORTED:
            raise ValueError(
                f"LibMTL weighting {p.weighting!r} is not supported: {_UNSUPPORTED[p.weighting]}."
            )
        if not isinstance(p.kwargs, dict):
            raise ValueError(f"Parameter `kwargs` should be a mapping. Found `kwargs = {p.kwargs!r}`.")
        allowed = LIBMTL_KWARGS.get(p.weighting)
        if allowed is not None:
            for key in p.kwargs:
                if key not in allowed:
                    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.4)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ValueError(
                        f"Parameter `kwargs` has a key that LibMTL's {p.weighting} does not read "
                        f"(it reads: {', '.join(allowed) or 'nothing'}). Found `kwargs.{key}`.{hint}"
                    )
        if p.weighting == "CAGrad" and len(self.task_names) != 3:
            raise ValueError(
                f"LibMTL's CAGrad hard-codes three tasks; found {len(self.task_names)} ({self.task_names}). "
                "Use the `cagrad` method instead."
            )
        if len(self.task_names) < 1:
            raise ValueError("the LibMTL adapter needs at least one task")

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {}

    def _fp16_safe(self) -> bool:
        name = self.params.weighting
        return name in _FP16_SAFE or (name == "MGDA" and self.kwargs.get("mgda_gn") == "none")

    def backward(self, inputs: StepInputs) -> dict[str, float]:
        if inputs.loss_scale != 1.0 and not self._fp16_safe():
            raise NotImplementedError(
                f"LibMTL weighting {self.params.weighting!r} is not proportional to the loss scale, so it "
                "cannot run under fp16 loss scaling; use precision bf16 or fp32"
            )
        bridge = self.weighting
        shared = [p for p in inputs.shared_parameters if p.requires_grad]
        bridge.shared = shared
        if shared:
            bridge.device = shared[0].device
        parked = [p.grad for p in shared]
        for p in shared:
            p.grad = torch.zeros_like(p)
        weighted = [inputs.weights[t] * inputs.losses[t] for t in self.task_names]
        losses = torch.stack([inputs.scale(loss) for loss in weighted])
        try:
            result = bridge.backward(losses, **self.kwargs)
        finally:
            bridge.shared = []
        if self.params.weighting == "MGDA" and result is None:
            raise RuntimeError("LibMTL's MGDA did not converge in 250 iterations (it returned no weights)")
        for p, old in zip(shared, parked):
            if old is not None:
                p.grad = p.grad + old
        logs = {"loss": detach_float(sum(weighted))}  # type: ignore[arg-type]
        if result is not None:
            values = result.detach().cpu().numpy() if isinstance(result, Tensor) else np.asarray(result)
            for name, value in zip(self.task_names, values.reshape(-1).tolist()):
                logs[f"weight/{name}"] = float(value)
        return logs

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        """Append the epoch-mean losses to LibMTL's ``train_loss_buffer``; ``epoch`` (completed
        epochs) becomes LibMTL's 0-based index of the next epoch."""
        column = np.array([[train_losses.get(t, np.nan)] for t in self.task_names], dtype=float)
        self.weighting.train_loss_buffer = np.concatenate([self.weighting.train_loss_buffer, column], axis=1)
        self.weighting.epoch = epoch

    def get_extra_state(self) -> dict[str, Any]:
        return {"epoch": self.weighting.epoch, "train_loss_buffer": self.weighting.train_loss_buffer.tolist()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weighting.epoch = int(state["epoch"])
        buffer = np.asarray(state["train_loss_buffer"], dtype=float)
        self.weighting.train_loss_buffer = buffer.reshape(len(self.task_names), -1)
