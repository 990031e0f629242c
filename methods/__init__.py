"""Multitask methods, one file each; importing this package registers the built-in ones."""

from . import rlar, vanilla  # noqa: F401  (registration side effects)
from .base import MethodNeeds, MultiTaskMethod, StepInputs

__all__ = ["MethodNeeds", "MultiTaskMethod", "StepInputs"]
