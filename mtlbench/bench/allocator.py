"""glibc's malloc settings for timing training steps on the CPU, set from inside the process.

By default glibc gives large freed blocks back to the system (and raises its mmap threshold as they
are freed), so a step that allocates what the previous step gave back pays page faults for it: a
step's time then depends on the steps timed before it (configuration A's vanilla step took 228 ms
between RLAR steps and 300 ms between RLAR-subset steps, the same step). :func:`retain_freed_blocks`
keeps blocks up to 32 MiB on glibc's heap and never trims it, through ``mallopt`` — what the
environment variables ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=…`` do at start-up,
without restarting the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``): blocks up to
#: 32 MiB come from the heap.
RETAINED_BLOCK_BYTES = 32 * 1024 * 1024
#: ``mallopt`` takes an ``int``: a heap top above 2 GiB free would be trimmed, nothing below.
NEVER_TRIM_BYTES = 2**31 - 1


def _mallopt() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return None


def retain_freed_blocks() -> dict[str, int] | None:
    """Keep freed blocks up to 32 MiB on the heap and never trim it; the settings applied, or
    ``None`` where the C library is not glibc (the system's allocator is then left as it is)."""
    mallopt = _mallopt()
    if mallopt is None:
        return None
    settings = {"M_MMAP_THRESHOLD": RETAINED_BLOCK_BYTES, "M_TRIM_THRESHOLD": NEVER_TRIM_BYTES}
    for param, value in ((M_MMAP_THRESHOLD, RETAINED_BLOCK_BYTES), (M_TRIM_THRESHOLD, NEVER_TRIM_BYTES)):
        if mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            return None
    return settings
