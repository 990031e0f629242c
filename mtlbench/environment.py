"""Where a run or benchmark ran: library versions, device, host."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def recorded_packages() -> list[str]:
    """mtlbench and every package it requires (its declared dependencies, extras left out)."""
    try:
        requires = metadata.requires("mtlbench") or []
    except metadata.PackageNotFoundError:
        requires = []
    names = [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return ["mtlbench", *names]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in recorded_packages():
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["cuda"] = torch.version.cuda or "none"
    return out


def cpu_name() -> str:
    """The CPU model as the OS reports it (``/proc/cpuinfo`` on Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    info["threads"] = torch.get_num_threads()
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(idx)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(idx)))
    else:
        info["name"] = info["cpu"]
    return info


def git_commit(path: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=path or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
