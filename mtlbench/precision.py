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
