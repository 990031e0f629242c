"""One folder per run and the index of all runs that leaderboards read.

``<output_dir>/<task>/<method>-<backbone>-<run_id>/`` holds ``config.yaml`` (the resolved
configuration), ``metrics.jsonl`` (one line per epoch), ``checkpoints/best.pt`` and
``checkpoints/last.pt``, and ``result.json`` when the run has finished. ``<output_dir>/index.json``
lists every finished run. All files are written atomically.

The run folders are the record; the index is derived from them: :func:`rebuild_index` recreates it
from every ``result.json`` (and every cross-validation summary), and :func:`update_index` does so by
itself when it finds the index unreadable (the broken file is kept beside it). Checkpoints are read
with ``weights_only=True``: a run folder's ``.pt`` file holds tensors and plain containers only, and
one that pickles anything else is refused, never executed. A run folder is locked while a process
trains in it (:meth:`RunFolder.lock`), so one configuration started twice does not train twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlbench import atomic
from mtlbench.config import RunConfig, to_yaml
from mtlbench.errors import DataError


class RunFolderError(DataError):
    """A run folder's file cannot be used (corrupt, not written by mtlbench, or in use)."""


class CorruptIndexError(RuntimeError):
    """``index.json`` cannot be parsed; ``mtlbench index --rebuild`` recreates it from the run folders."""


@dataclass
class RunFolder:
    root: Path
    run_id: str

    @classmethod
    def for_config(cls, config: RunConfig) -> RunFolder:
        run_id = config.run_id()
        root = Path(config.output_dir) / config.task / f"{config.method}-{config.backbone}-{run_id}"
        return cls(root, run_id)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result_path(self) -> Path:
        return self.root / "result.json"

    def checkpoint_path(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.pt"

    def is_finished(self) -> bool:
        """A readable ``result.json`` exists (a damaged one is re-created by resuming the run)."""
        try:
            self.read_result()
        except (OSError, RunFolderError):
            return False
        return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for this process; :class:`RunFolderError` if another process has it."""
        try:
            with atomic.locked(self.root / ".lock", wait=False):
                yield
        except atomic.LockHeld:
            raise RunFolderError(
                f"{self.root} is in use by another mtlbench process training the same configuration; "
                "wait for it to finish (its result is then shown by the same command)"
            ) from None

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path("last").is_file()

    def create(self, config: RunConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.config_path, to_yaml({"run_id": self.run_id, **config.to_dict()}))

    def reset(self) -> None:
        """Forget a previous attempt (``--restart``): metrics, checkpoints and result."""
        for path in (
            self.metrics_path,
            self.result_path,
            self.checkpoint_path("last"),
            self.checkpoint_path("best"),
        ):
            path.unlink(missing_ok=True)

    def log_metrics(self, record: dict[str, Any]) -> None:
        atomic.append_line(self.metrics_path, json.dumps(record, default=atomic._json_default))

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keep the log lines of epochs ``1..epochs_done`` (the checkpoint a run resumes from), one per
        epoch: later epochs, a line torn by a kill, and lines of an attempt that never reached a
        checkpoint are dropped."""
        if not self.metrics_path.is_file():
            return
        kept: dict[int, str] = {}
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                epoch = int(json.loads(line)["epoch"])
            except (ValueError, KeyError, TypeError):
                continue  # torn or foreign line
            if 1 <= epoch <= epochs_done:
                kept[epoch] = line  # a repeated epoch: the later attempt is the one checkpointed
        atomic.write_text(self.metrics_path, "".join(kept[e] + "\n" for e in sorted(kept)))

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        atomic.torch_save(self.checkpoint_path(name), state)

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        return load_checkpoint_file(self.checkpoint_path(name))

    def write_result(self, result: dict[str, Any]) -> None:
        atomic.write_json(self.result_path, result)

    def read_result(self) -> dict[str, Any]:
        try:
            result = json.loads(self.result_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{self.result_path} is damaged ({exc})") from None
        if not isinstance(result, dict) or "metrics" not in result:
            raise RunFolderError(f"{self.result_path} is not a result of mtlbench")
        return result


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint of a run, read with ``weights_only=True`` (tensors and plain containers only).

    A file that cannot be read, is damaged, or pickles anything else (code) is a
    :class:`RunFolderError` naming the file; nothing in it is executed.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist") from None
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(
            f"{path} was refused: it pickles more than tensors and plain containers, so it is not a "
            f"checkpoint mtlbench wrote ({first})"
        ) from None
    except Exception as exc:  # a torn or foreign file: zip, pickle and EOF errors alike
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(
            f"{path} is damaged ({reason}); start the configuration again with --restart"
        ) from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise RunFolderError(f"{path} is not a checkpoint of mtlbench (no model weights)")
    return checkpoint


def index_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "index.json"


def read_index(output_dir: str | Path) -> list[dict[str, Any]]:
    path = index_path(output_dir)
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptIndexError(
            f"run index {str(path)!r} is corrupt ({exc}); `mtlbench index --rebuild` recreates it from "
            "the run folders"
        ) from None
    if not isinstance(runs, list):
        raise CorruptIndexError(f"run index {str(path)!r} is not a list of runs; `mtlbench index --rebuild`")
    return runs


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def run_index_entry(result: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """The index entry of a finished run, from its ``result.json``."""
    return {
        "run_id": result["run_id"],
        "task": result["task"],
        "method": result["method"],
        "backbone": result["backbone"],
        "preset": result.get("preset"),
        "seed": result.get("seed"),
        "path": str(root),
        "metrics": {split: _scalars(m) for split, m in result["metrics"].items()},
        "mean_step_time_s": result.get("mean_step_time_s"),
        "peak_memory_mb": result.get("peak_memory_mb"),
        "device": (result.get("device") or {}).get("name"),
        **({"tune": result["tune"]} if result.get("tune") else {}),  # the studies' trials it served
    }


def cv_index_entry(summary: dict[str, Any], path: str | Path, ident: str, preset: Any) -> dict[str, Any]:
    """The index entry of a cross-validation summary (``<task>/cv-*.json``)."""
    metrics = summary["metrics"]
    return {
        "run_id": f"cv-{ident}",
        "kind": "cv",
        "task": summary["task"],
        "method": summary["method"],
        "backbone": summary["backbone"],
        "preset": preset,
        "path": str(path),
        "folds": summary["folds"],
        "metrics": {s: {k: v["mean"] for k, v in m.items()} for s, m in metrics.items()},
        "metrics_std": {s: {k: v["std"] for k, v in m.items()} for s, m in metrics.items()},
    }


def _stamp(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "indexed_at": entry.get("indexed_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _sorted(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(runs, key=lambda r: (r.get("task", ""), r.get("method", ""), r.get("run_id", "")))


def scan_runs(output_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Index entries of every finished run and cross-validation summary under ``output_dir``, and the
    files that could not be read (reported, skipped)."""
    out = Path(output_dir)
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    for result_path in sorted(out.glob("*/*/result.json")):
        try:
            result = RunFolder(result_path.parent, "").read_result()
            entries.append(run_index_entry(result, result_path.parent))
        except (OSError, RunFolderError, KeyError, TypeError) as exc:
            problems.append(f"{result_path}: {exc}")
    for cv_path in sorted(out.glob("*/cv-*.json")):
        try:
            summary = json.loads(cv_path.read_text())
            ident = cv_path.stem.rsplit("-", 1)[-1]
            entries.append(
                cv_index_entry(summary, cv_path, ident, (summary.get("config") or {}).get("preset"))
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{cv_path}: {exc}")
    return entries, problems


def _set_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    return aside


def rebuild_index(output_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Recreate ``index.json`` from the run folders; an unreadable old index is kept beside it
    (``index.json.corrupt-<time>``). Returns the entries and the files that could not be read."""
    path = index_path(output_dir)
    with atomic.locked(path.with_suffix(".lock")):
        return _rebuild_locked(output_dir)


def _rebuild_locked(output_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    path = index_path(output_dir)
    previous: dict[str, dict[str, Any]] = {}
    try:
        previous = {r.get("run_id"): r for r in read_index(output_dir) if isinstance(r, dict)}
    except CorruptIndexError:
        _set_aside(path)
    entries, problems = scan_runs(output_dir)
    runs = [_stamp({**e, "indexed_at": previous.get(e["run_id"], {}).get("indexed_at")}) for e in entries]
    atomic.write_json(path, _sorted(runs))
    return runs, problems


def update_index(output_dir: str | Path, entry: dict[str, Any]) -> None:
    """Insert or replace the entry for ``entry['run_id']`` under a lock, atomically.

    An unreadable index is set aside and rebuilt from the run folders first, so one broken file never
    loses a finished run.
    """
    path = index_path(output_dir)
    with atomic.locked(path.with_suffix(".lock")):
        try:
            current = read_index(output_dir)
        except CorruptIndexError:
            current, _ = _rebuild_locked(output_dir)
        runs = [r for r in current if r.get("run_id") != entry["run_id"]]
        runs.append({**entry, "indexed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        atomic.write_json(path, _sorted(runs))


def is_indexed(output_dir: str | Path, run_id: str) -> bool:
    try:
        return any(r.get("run_id") == run_id for r in read_index(output_dir))
    except CorruptIndexError:
        return False
