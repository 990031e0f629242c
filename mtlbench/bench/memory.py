"""Peak memory of one method's training steps, each method in a process of its own.

On the CPU the process's resident set is measured: its baseline after the model, the data and the
batch are built, then its high-water mark over a few training steps (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` once the baseline is taken — Linux
only), with glibc told to return freed blocks (:data:`GLIBC_RETURN_FREED_BLOCKS`). The figure
reported is the peak above the baseline: the step's activations, gradients, the
method's own buffers and the optimizer's state, whatever allocator holds them. On CUDA the
allocator's statistics (``max_memory_allocated`` above the allocated memory before the first step)
are used in the same way, in the parent process or a child alike.

Run as ``python -m mtlbench.bench.memory`` with a JSON object on stdin
(``{"values": <run configuration>, "steps": 3}``); it prints one JSON line: ``peak_mb`` or an
``error`` (an out-of-memory is a result, not a crash).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from mtlbench.config import RunConfig, resolve_config

STATUS = Path("/proc/self/status")
#: glibc malloc settings for the measuring child. By default glibc raises its mmap threshold as large
#: blocks are freed (up to 32 MiB) and keeps later blocks of that size on its heap, so the resident
#: set depends on the order of past allocations more than on the tensors alive (runs of one method
#: moved by ±40 MB). A fixed threshold turns that off: every block of 128 KiB or more is a mapping of
#: its own, returned on free, and the resident set follows the live tensors. (The timing process
#: does the opposite: :mod:`mtlbench.bench.allocator`.)
GLIBC_RETURN_FREED_BLOCKS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current RSS (``echo 5 > clear_refs``)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def measure_in_process(config: RunConfig, steps: int) -> dict[str, Any]:
    """Peak memory above the built run's baseline over ``steps`` training steps, in MiB."""
    from mtlbench.bench.harness import build_harness

    harness = build_harness(config)
    device = harness.device
    gc.collect()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            for _ in range(steps):
                harness.step()
            peak = torch.cuda.max_memory_allocated(device)
            return {"peak_mb": (peak - base) / 2**20, "baseline_mb": base / 2**20, "source": "cuda allocator"}
        base_kb = _status_kb("VmRSS")
        if base_kb is None or not reset_peak_rss():
            return {"error": "peak RSS needs Linux's /proc/self/status and clear_refs"}
        for _ in range(steps):
            harness.step()
        peak_kb = _status_kb("VmHWM") or 0.0
        return {"peak_mb": (peak_kb - base_kb) / 1024, "baseline_mb": base_kb / 1024, "source": "peak RSS"}
    except torch.OutOfMemoryError as exc:
        return {"error": f"out of memory: {str(exc).splitlines()[0]}"}


def measure_in_subprocess(config: RunConfig, steps: int, timeout_s: float = 1800) -> dict[str, Any]:
    """:func:`measure_in_process` in a fresh interpreter (so no other method's memory is counted)."""
    spec = json.dumps({"values": config.to_dict(), "steps": steps}, default=str)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    env.update(GLIBC_RETURN_FREED_BLOCKS)  # whatever the parent's (timing) settings are
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mtlbench.bench.memory"],
            input=spec,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        if proc.returncode < 0:
            tail = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"error": tail}
    return json.loads(lines[-1])


def main() -> None:
    spec = json.loads(sys.stdin.read())
    values = dict(spec["values"])
    values.pop("run_id", None)
    config = resolve_config(values=values)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    print(json.dumps(measure_in_process(config, int(spec.get("steps", 3)))))


if __name__ == "__main__":
    main()
