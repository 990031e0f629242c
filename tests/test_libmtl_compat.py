"""The LibMTL import workaround: without it the import fails; with it LibMTL's weightings load."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torchvision")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_plain_import_fails_on_current_torchvision() -> None:
    result = run("import LibMTL")
    if result.returncode == 0:
        pytest.skip("this torchvision still ships torchvision.models.utils; the shim is not needed")
    assert "torchvision.models.utils" in result.stderr


def test_shimmed_import_loads_the_weightings() -> None:
    code = (
        "from mtlbench.libmtl_compat import import_libmtl\n"
        "w = import_libmtl('weighting')\n"
        "import torch.hub, torchvision.models.utils as u\n"
        "assert u.load_state_dict_from_url is torch.hub.load_state_dict_from_url\n"
        "print(sorted(n for n in ('PCGrad', 'CAGrad', 'MGDA', 'UW', 'DWA', 'GradNorm') if hasattr(w, n)))\n"
    )
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert "'CAGrad', 'DWA', 'GradNorm', 'MGDA', 'PCGrad', 'UW'" in result.stdout
