"""Test-wide settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> Iterator[None]:
    # The test tensors are tiny: intra-op threads only add spin-waiting on a 2-core machine
    # (measured 5x slower with 2 threads when the other core is busy), so tests run single-threaded.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
