"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


class WriteError(OSError):
    """A file could not be written (full disk, read-only folder, ...); the message names the path and
    the operating system's reason. The previous version of the file, if any, is left as it was."""


def cannot_write(path: str | Path, exc: OSError) -> WriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return WriteError(exc.errno or 0, f"cannot write {path}: {reason}")


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise cannot_write(path, exc) from None
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda h: h.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def torch_save(path: str | Path, obj: Any) -> None:
    """Serialised in memory first, so a full disk is an ``OSError`` with its reason, not a torch
    ``RuntimeError`` from the middle of the zip writer."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync (a crash loses at most that line, never earlier ones)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8") as handle:
            handle.write(line.rstrip("\n") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise cannot_write(p, exc) from None


class LockHeld(OSError):
    """``locked(..., wait=False)`` found the lock held by another process."""


@contextlib.contextmanager
def locked(path: str | Path, wait: bool = True) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for read-modify-write cycles.

    ``wait=False`` raises :class:`LockHeld` at once when another process holds it. The lock dies with
    its process (a killed run never leaves a stale lock behind).
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        handle = open(p, "a+")  # closed by the with-block below
    except OSError as exc:
        raise cannot_write(p, exc) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeld(f"{p} is locked by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
