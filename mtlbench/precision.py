"""Device choice and mixed precision: autocast context and (for fp16) a gradient scaler."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlbench.config import ConfigError


def pick_device(setting: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA request without CUDA is an error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(
            f"train.device: {setting!r} is not a device (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {setting!r} but CUDA is not available on this machine")
    return device


def pick_amp(setting: str, device: torch.device) -> str:
    """Resolve ``auto``: bf16 on GPUs that support it, fp16 on older GPUs, none on the CPU."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "none"


@dataclass
class Precision:
    """Autocast settings plus the loss scaler used under fp16 (identity otherwise)."""

    device: torch.device
    mode: str  # none | bf16 | fp16
    scaler: Any = None

    @classmethod
    def create(cls, device: torch.device, mode: str) -> Precision:
        scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
        return cls(device, mode, scaler)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.mode == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def heads_in_float32(self, representation_grads: bool) -> bool:
        """Whether the heads and losses run in float32 after an autocast backbone.

        Under fp16, methods that differentiate the task losses with respect to the shared
        representation (``MethodNeeds.representation_grads``: RLAR, Rep-MTL, MGDA-UB) get heads and
        losses in float32: their penalties are functions of ∇_z L taken through the heads, and an
        fp16 forward of the heads moves those penalties by ~3e-3 (RLAR) to ~2e-2 (Rep-MTL's CSA)
        against float32 — a change of the method, not rounding of its result. The backbone keeps
        fp16. bf16 and fp32 are unchanged (bf16 autocast everywhere: its range does not overflow
        the second-order pass, and the heads' precision is the user's choice there).
        """
        return self.mode == "fp16" and representation_grads

    def heads_autocast(self, representation_grads: bool) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for the heads and losses (see :meth:`heads_in_float32`)."""
        if self.heads_in_float32(representation_grads):
            return torch.autocast(device_type=self.device.type, enabled=False)
        return self.autocast()

    @property
    def scale(self) -> Callable[[Tensor], Tensor]:
        if self.scaler is None:
            return _identity
        return self.scaler.scale

    @property
    def loss_scale(self) -> float:
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step; returns False when fp16 scaling skipped it (inf/NaN gradients)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _identity(loss: Tensor) -> Tensor:
    return loss
