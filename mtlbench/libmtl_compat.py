"""The one place that makes LibMTL 1.1.5 importable on current torchvision.

LibMTL's ``model/resnet.py`` imports ``torchvision.models.utils.load_state_dict_from_url``; that
module was removed from torchvision, and the function lives on as
``torch.hub.load_state_dict_from_url``. Before the first LibMTL import we register a small module
under the old name that re-exports it. Nothing else in LibMTL is changed. LibMTL is an optional
reference (``pip install LibMTL``), used by tests and by the LibMTL adapter.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

SHIM_NAME = "torchvision.models.utils"


def install_torchvision_shim() -> bool:
    """Register ``torchvision.models.utils`` if torchvision lacks it; return True if it was added."""
    try:
        importlib.import_module(SHIM_NAME)
        return False
    except ModuleNotFoundError:
        pass
    import torch.hub
    import torchvision.models

    shim = types.ModuleType(SHIM_NAME)
    shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
    sys.modules[SHIM_NAME] = shim
    torchvision.models.utils = shim  # type: ignore[attr-defined]
    return True


def import_libmtl(submodule: str = "") -> Any:
    """Import ``LibMTL`` (or ``LibMTL.<submodule>``) with the shim in place; clear error if absent."""
    name = f"LibMTL.{submodule}" if submodule else "LibMTL"
    install_torchvision_shim()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "LibMTL":
            raise ModuleNotFoundError(
                "LibMTL is not installed; install it with `pip install LibMTL` (an optional reference)"
            ) from None
        raise
