"""Loading local pretrained weights into a backbone, tolerant of foreign checkpoint layouts.

Only local files are read (the suite never downloads at run time), always with
``torch.load(..., weights_only=True)`` so a checkpoint cannot execute code. Tensors are copied
when their name and shape match; everything else is reported, not silently dropped.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Keys under which trainers nest the weights: Lightning/timm ("state_dict"), nnU-Net v2
# ("network_weights"), many research repositories ("model").
_NESTED_KEYS = ("state_dict", "network_weights", "model")
# Wrappers that prefix every key: DistributedDataParallel/DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did with each tensor name.

    ``matched``: copied into the module. ``missing``: in the module, absent from the checkpoint.
    ``unexpected``: in the checkpoint, absent from the module. ``shape_mismatch``: in both with
    different shapes, as ``"name: checkpoint (a, b) vs module (c, d)"``. ``skipped``: outside the
    requested ``prefix`` and therefore not considered.
    """

    path: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the module was loaded and nothing in scope was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.matched)} matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} shape mismatches, "
            f"{len(self.skipped)} skipped (outside prefix)"
        )


@contextlib.contextmanager
def _allow_numpy_scalars() -> Iterator[None]:
    """Let ``weights_only`` loading accept numpy scalars, nothing else.

    nnU-Net v2 checkpoints keep numpy floats in their training log next to the weights; the
    numpy scalar constructor and ``numpy.dtype`` are what PyTorch's documentation suggests to
    allow for them.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        import numpy as np
    except ImportError:
        np = None  # type: ignore[assignment]
    if safe_globals is None or np is None:
        yield
        return
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Float64DType, ...); the object
    # dtype is left out, it would wrap arbitrary objects.
    dtype_classes = [
        getattr(np.dtypes, n)
        for n in dir(getattr(np, "dtypes", None))
        if n.endswith("DType") and n != "ObjectDType"
    ]
    with safe_globals([multiarray.scalar, np.dtype, *dtype_classes]):
        yield


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, numpy scalars allowed (nnU-Net logs them).

    A missing file is a ``FileNotFoundError`` and a file that pickles code a ``ValueError``, both
    naming the path; ``what`` says what the file was meant to be.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {str(file)!r}")
    try:
        with _allow_numpy_scalars():
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{str(file)!r} cannot be read with weights_only=True (it pickles more than tensors, plain "
            f"containers and numpy scalars); re-save just its state dict with torch.save(state_dict, path): "
            f"{exc}"
        ) from exc


def _extract_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ValueError(
        f"{path} holds no state dict: expected a mapping of names to tensors, or one nested under "
        f"{', '.join(repr(k) for k in _NESTED_KEYS)}"
    )


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if prefix and key.startswith(prefix) else key


def load_pretrained(
    module: nn.Module, path: str | Path, prefix: str = "", strict: bool = False
) -> PretrainedReport:
    """Copy the tensors of a local checkpoint whose name and shape match into ``module``.

    ``path`` may hold a raw state dict or a dict with the weights under ``"state_dict"``,
    ``"network_weights"`` (nnU-Net v2) or ``"model"``. Leading ``module.`` / ``_orig_mod.`` are
    removed. When ``prefix`` is given (e.g. ``"encoder."`` for a full nnU-Net network) and some
    keys start with it, those keys lose it and all other keys are skipped; when no key starts
    with it, the keys are used as they are.

    Raises ``FileNotFoundError`` if ``path`` does not exist, and with ``strict=True`` a
    ``ValueError`` listing every missing, unexpected and mis-shaped tensor (nothing is copied
    in that case).
    """
    file = Path(path).expanduser()
    raw = read_checkpoint(file, "pretrained weights")
    source = _extract_state_dict(raw, str(file))

    for wrapper in _WRAPPER_PREFIXES:
        if source and all(k.startswith(wrapper) for k in source):
            source = {_strip(k, wrapper): v for k, v in source.items()}

    report = PretrainedReport(path=str(file))
    if prefix and any(k.startswith(prefix) for k in source):
        report.skipped = sorted(k for k in source if not k.startswith(prefix))
        source = {_strip(k, prefix): v for k, v in source.items() if k.startswith(prefix)}

    target = module.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        if name not in target:
            report.unexpected.append(name)
        elif tensor.shape != target[name].shape:
            report.shape_mismatch.append(
                f"{name}: checkpoint {tuple(tensor.shape)} vs module {tuple(target[name].shape)}"
            )
        else:
            to_load[name] = tensor
    report.missing = [n for n in target if n not in source]
    report.matched = list(to_load)

    if strict and not report.complete:
        problems = (
            [f"missing {n}" for n in report.missing]
            + [f"unexpected {n}" for n in report.unexpected]
            + [f"shape mismatch {s}" for s in report.shape_mismatch]
        )
        raise ValueError(f"strict load of {str(file)!r} failed:\n  " + "\n  ".join(problems))

    module.load_state_dict(to_load, strict=False)
    return report


def apply_pretrained(module: nn.Module, path: str | Path | None, prefix: str = "") -> PretrainedReport | None:
    """What every backbone factory does with its ``pretrained=`` option.

    Nothing happens for ``None``. A checkpoint that matches no tensor at all is an error (it is
    almost certainly the wrong file); a partial match warns with the report's summary, since
    unloaded tensors keep their random initialisation.
    """
    if path is None:
        return None
    report = load_pretrained(module, path, prefix=prefix)
    if not report.matched:
        raise ValueError(
            f"no tensor of {str(path)!r} matches {type(module).__name__}: {report.summary()}; "
            f"first checkpoint keys: {report.unexpected[:5]}, first module keys: {report.missing[:5]}"
        )
    if report.missing or report.shape_mismatch:
        warnings.warn(f"pretrained weights only partly loaded: {report.summary()}", stacklevel=3)
    return report
