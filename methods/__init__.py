"""Multitask methods, one file each; importing this package registers the built-in ones."""

from . import (  # noqa: F401  (registration side effects)
    aligned_mtl,
    cagrad,
    dwa,
    famo,
    gradnorm,
    imtl,
    libmtl_adapter,
    mgda,
    nash_mtl,
    pcgrad,
    rep_mtl,
    rlar,
    rlw,
    uw,
    vanilla,
)
from .base import MethodNeeds, MultiTaskMethod, StepInputs

__all__ = ["MethodNeeds", "MultiTaskMethod", "StepInputs"]
