"""pytest-benchmark settings for the kernel suites in ``benchmarks/`` (not part of ``python -m pytest``).

The project's pytest configuration adds ``--benchmark-disable`` to every run (``pyproject.toml``), and
pytest-benchmark refuses ``--benchmark-only`` together with it. Asking for ``--benchmark-only`` is an
explicit request to measure, so here it also switches the benchmarks on (``--benchmark-enable``): the
documented command ``python -m pytest benchmarks/ --benchmark-only`` works as written. Without it the
suites run each kernel once, as a smoke test of their assertions.

Torch runs with :data:`BENCH_THREADS` intra-op threads (``MTLBENCH_BENCH_THREADS`` overrides), so a
saved baseline and a later comparison on the same machine use the same thread count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

BENCH_THREADS = int(os.environ.get("MTLBENCH_BENCH_THREADS", "2"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("benchmark_only", default=False):
        config.option.benchmark_enable = True


@pytest.fixture(autouse=True, scope="session")
def bench_threads() -> Iterator[int]:
    previous = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    yield BENCH_THREADS
    torch.set_num_threads(previous)
