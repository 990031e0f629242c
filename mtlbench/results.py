"""One folder per run and the index of all runs that leaderboards read.

``<output_dir>/<task>/<method>-<backbone>-<run_id>/`` holds ``config.yaml`` (the resolved
configuration), ``metrics.jsonl`` (one line per epoch), ``checkpoints/best.pt`` and
``checkpoints/last.pt``, and ``result.json`` when the run has finished. ``<output_dir>/index.json``
lists every finished run. All files are written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlbench import atomic
from mtlbench.config import RunConfig, to_yaml


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
        return self.result_path.is_file()

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
        """Drop log lines of epochs after the checkpoint a resumed run starts from."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip() and json.loads(line).get("epoch", 0) <= epochs_done:
                kept.append(line)
        atomic.write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        atomic.torch_save(self.checkpoint_path(name), state)

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        import torch

        path = self.checkpoint_path(name)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise RuntimeError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None

    def write_result(self, result: dict[str, Any]) -> None:
        atomic.write_json(self.result_path, result)

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text())


def index_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "index.json"


def read_index(output_dir: str | Path) -> list[dict[str, Any]]:
    path = index_path(output_dir)
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"run index {str(path)!r} is corrupt: {exc}") from None


def update_index(output_dir: str | Path, entry: dict[str, Any]) -> None:
    """Insert or replace the entry for ``entry['run_id']`` under a lock, atomically."""
    path = index_path(output_dir)
    with atomic.locked(path.with_suffix(".lock")):
        runs = [r for r in read_index(output_dir) if r.get("run_id") != entry["run_id"]]
        runs.append({**entry, "indexed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        runs.sort(key=lambda r: (r.get("task", ""), r.get("method", ""), r.get("run_id", "")))
        atomic.write_json(path, runs)
