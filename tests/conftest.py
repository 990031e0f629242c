"""Test-wide settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

#: An example third-party plugin (task ``twoshapes``, method ``scaled_sum``, backbone ``tiny_cnn``),
#: "installed" by putting it on the path: its dist-info declares the entry points. The core's tests
#: run on its small task; subprocesses started by tests inherit it through PYTHONPATH.
PLUGIN_EXAMPLE = Path(__file__).parent / "plugin_example"
if str(PLUGIN_EXAMPLE) not in sys.path:
    sys.path.insert(0, str(PLUGIN_EXAMPLE))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PLUGIN_EXAMPLE), os.environ.get("PYTHONPATH", "")) if p
    )


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> Iterator[None]:
    # The test tensors are tiny: intra-op threads only add spin-waiting on a 2-core machine
    # (measured 5x slower with 2 threads when the other core is busy), so tests run single-threaded.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
