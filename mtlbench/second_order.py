"""Whether the model's layers run mtlbench's second-order kernels (on by default).

:mod:`mtlbench.conv`, :mod:`mtlbench.instance_norm` and :mod:`mtlbench.activation` give the heads'
layers a double backward written out, which RLAR and Rep-MTL traverse (``∇_z L`` with
``create_graph``, then its gradient). Their first-order work is PyTorch's kernels, but each layer
then passes through a Python ``autograd.Function``, which costs tens of microseconds per layer and
call: on the quick preset's small model, 22 % of a vanilla step. The trainer therefore turns them
off for every method that does not differentiate its gradients again
(``MethodNeeds.second_order``) and for evaluation; the layers are then exactly PyTorch's modules.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TypeVar

import torch

_ACTIVE: ContextVar[bool] = ContextVar("mtlbench_second_order_kernels", default=True)

#: RLAR's ``subset`` differentiates the heads of a few samples twice. Below this many input pixels
#: (samples × height × width) in that part the kernels' Python cost per layer outweighs what they
#: save, and PyTorch's own layers run it. Measured on the VM (2 threads): 2 samples at 64 px (8 192
#: pixels, the quick preset) 1.39× vanilla with PyTorch's layers against 1.51× with the kernels;
#: 2 samples at 128 px (32 768 pixels, configuration A) 1.41× against 1.33×.
MIN_SUBSET_PIXELS = 2**15


def active() -> bool:
    """Whether the layers use their own double backward now."""
    return _ACTIVE.get()


@contextlib.contextmanager
def kernels(enabled: bool) -> Iterator[None]:
    """Run the model's layers with (``True``) or without their own second-order kernels."""
    token = _ACTIVE.set(bool(enabled))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


FunctionClass = TypeVar("FunctionClass", bound=type[torch.autograd.Function])


def signature_once(cls: FunctionClass) -> FunctionClass:
    """Compute an ``autograd.Function``'s forward signature once instead of at every ``apply``.

    For a Function with ``setup_context`` (the functorch style, needed for a generated vmap rule),
    PyTorch binds the arguments of each ``apply`` to ``inspect.signature(forward)``, which
    ``inspect`` rebuilds every time unless the function carries it as ``__signature__``
    (PEP 362). Measured: 100 µs less per convolution–norm–activation block and RLAR step
    (forward, ``∇_z L``, double backward; 1 thread), 20 % of the layers' Python cost. The binding
    itself, and so every argument and default, is unchanged.
    """
    forward = cls.__dict__["forward"]
    function = forward.__func__ if isinstance(forward, staticmethod) else forward
    function.__signature__ = inspect.signature(function)
    return cls
