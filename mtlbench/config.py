"""Typed run configuration: defaults in one place, presets, YAML files and ``a.b=value`` overrides.

Resolution order: dataclass defaults → preset → ``--config`` file → command-line overrides.
Unknown keys and values of the wrong type are rejected before any work starts, with the
closest valid key suggested. The per-registry sections (``task_args``, ``method_args``,
``backbone_args``) are checked against the chosen entry's own typed parameters by
:mod:`mtlbench.resolve`, which needs the registries; this module stays import-light.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from mtlbench.errors import ConfigError

#: Field metadata marking a setting that does not change what a run computes (kept out of the run id).
NOT_IDENTITY = {"identity": False}


@dataclass
class DataConfig:
    """Data settings every task shares. A task extends them with its own (``TaskDefinition.Data``).

    ``root=None`` means the task's embedded data (a phantom, a data set a package ships).
    """

    root: str | None = None
    #: The layout of ``root``; ``None`` means the task's default.
    format: str | None = None
    cache_dir: str | None = field(default=None, metadata=NOT_IDENTITY)
    num_workers: int = field(default=0, metadata=NOT_IDENTITY)
    #: k-fold cross-validation inside the training pool: ``folds`` = k (None: the task's fixed
    #: split) and ``fold`` = which fold is validation. Folds are saved with the data and reused by
    #: every run, so every method sees the same folds.
    folds: int | None = None
    fold: int = 0
    fold_seed: int = 0
    #: Options for the data-set reader (each task documents its own).
    reader_options: dict[str, Any] = field(default_factory=dict)
    #: Augmentation of training samples (each task defines which transforms).
    augment: bool = False


@dataclass
class TrainConfig:
    """How the common trainer runs; identical for every method."""

    epochs: int = 14
    steps_per_epoch: int = 40
    val_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    #: ``adamw`` (decoupled weight decay), ``adam`` (weight decay as L2 on the gradient, as LibMTL and
    #: the MTAN-line papers), ``sgd`` (with ``momentum``); see :mod:`mtlbench.optim`.
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9
    #: The learning rate per epoch: ``constant``; ``step`` (× ``lr_gamma`` every ``lr_step_epochs``
    #: epochs: the papers' 100 and 0.5); ``cosine`` (to near 0 at the last epoch). Any of them after
    #: ``warmup_epochs`` of linear warm-up.
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_step_epochs: int = 100
    lr_gamma: float = 0.5
    warmup_epochs: int = 0
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"
    device: str = "auto"
    #: Validation metric that picks the best checkpoint; ``None``: the task's default monitor.
    monitor: str | None = None
    monitor_mode: Literal["max", "min"] | None = None
    grad_clip: float | None = None
    #: Every N steps log the task-pair cosines of the shared gradients and the methods' own
    #: diagnostics (costs T extra backward passes on those steps); 0 turns it off.
    diagnostics_every: int = 20
    progress: bool = True
    #: On a GPU: cuDNN deterministic algorithms, ``torch.use_deterministic_algorithms`` and a fixed
    #: cuBLAS workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so reruns are bit-identical; costs speed.
    deterministic: bool = True
    #: Experiment trackers fed the per-epoch records of ``metrics.jsonl`` (:mod:`mtlbench.tracking`):
    #: ``tensorboard`` (event files in the run folder), ``mlflow`` (``train.tracking_uri``; default
    #: ``sqlite:///<output_dir>/mlflow.db``). Off by default; not part of the run id.
    loggers: tuple[str, ...] = ()
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        """Every value is checked here, so a bad one stops the run before anything is written."""
        for key in ("epochs", "steps_per_epoch", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"train.{key} must be at least 1, got {value}")
        if self.val_steps is not None and self.val_steps < 1:
            raise ValueError(
                f"train.val_steps must be at least 1, or null for the whole validation split, "
                f"got {self.val_steps}"
            )
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"train.{key} must be a finite number >= 0, got {value}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ValueError(f"train.betas[{i}] must be in [0, 1), got {beta}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.lr_step_epochs < 1:
            raise ValueError(f"train.lr_step_epochs must be at least 1, got {self.lr_step_epochs}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"train.lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"train.warmup_epochs must be >= 0 and less than train.epochs ({self.epochs}), "
                f"got {self.warmup_epochs}"
            )
        if self.grad_clip is not None and not (0 < self.grad_clip < float("inf")):
            raise ValueError(
                f"train.grad_clip must be a positive number (or null for none), got {self.grad_clip}"
            )
        unknown_loggers = [name for name in self.loggers if name not in ("tensorboard", "mlflow")]
        if unknown_loggers:
            raise ValueError(f"train.loggers: unknown {unknown_loggers} (available: tensorboard, mlflow)")
        if self.diagnostics_every < 0:
            raise ValueError(
                f"train.diagnostics_every must be >= 0 (0 turns it off), got {self.diagnostics_every}"
            )


@dataclass
class RunConfig:
    """Everything that defines a run. Its hash (without ``output_dir``) is the run id."""

    task: str = ""
    method: str = "vanilla"
    backbone: str = "unet_small"
    preset: str = "quick"
    seed: int = 0
    output_dir: str = "runs"
    #: An nnU-Net v2 ``checkpoint_final.pth`` loaded into the encoder and, where shapes match, the
    #: decoder of the task's segmentation head; the match report is saved with the run.
    nnunet_checkpoint: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task_args: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def run_id(self) -> str:
        return config_hash(self.to_dict(), self.non_identity_keys())

    def non_identity_keys(self) -> tuple[str, ...]:
        """Keys left out of the run id: the core's and the data fields the task marks so."""
        data_keys = tuple(
            f"data.{f.name}"
            for f in dataclasses.fields(self.data)
            if f.metadata.get("identity", True) is False
        )
        return NON_IDENTITY_KEYS + data_keys


# Keys that do not change what a run computes: excluded from the run id.
NON_IDENTITY_KEYS = ("output_dir", "train.progress", "train.loggers", "train.tracking_uri")

#: Every task has this preset: the defaults, meant as a CPU try-out of a few minutes.
DEFAULT_PRESET = "quick"


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def config_hash(
    resolved: dict[str, Any], ignore: tuple[str, ...] = NON_IDENTITY_KEYS, length: int = 10
) -> str:
    """Short stable hash of a resolved configuration, ignoring the dotted keys in ``ignore``."""
    ident = json.loads(json.dumps(resolved))
    for dotted in ignore:
        parts = dotted.split(".")
        node = ident
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# --------------------------------------------------------------------------- value coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_scalar_text(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert text from the command line.

    Raises :class:`ConfigError` naming ``key`` when the value does not fit.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if type(None) in options:
                return None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return coerce(value, opt, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected text, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _parse_scalar_text(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot use {value!r} as {_type_name(tp)}")


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1, cutoff=0.5)
    hint = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (valid: {', '.join(sorted(valid))})")


def build_dataclass(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a (possibly partial) mapping, validating every value."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, val in values.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            raise _unknown_key(full, names, where)
        kwargs[key] = coerce(val, hints[key], full)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if not (where and message.startswith(f"{where}.")):  # the message names the key already
            message = f"{where or cls.__name__}: {message}"
        raise ConfigError(message) from None
    return obj


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": "1"}, "c": "x"}`` (values stay text until coerced)."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=5)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {p!r}")
            node = nxt
        node[parts[-1]] = raw
    return tree


def parse_scalar_options(items: list[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=false"]`` → ``{"a": 1, "b": False}`` (values read as YAML scalars)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not of the form key=value")
        options[key.strip()] = _parse_scalar_text(raw)
    return options


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def resolve_config(
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    preset: str | None = None,
    values: dict[str, Any] | None = None,
    **top_level: Any,
) -> RunConfig:
    """Merge defaults, the task's preset, file and overrides into a validated :class:`RunConfig`.

    ``values`` is a mapping applied before the file (e.g. a saved run's configuration);
    ``top_level`` carries command-line options such as ``task=`` and ``method=``; ``None`` values
    are ignored. The task (which must be named) supplies its presets and the type of the ``data``
    section, so its module is imported here. Sections ``task_args``/``method_args``/``backbone_args``
    are checked later against the chosen registry entries (:func:`mtlbench.resolve.resolve_run`).
    """
    from mtlbench.registry import TASKS

    tree: dict[str, Any] = dict(values or {})
    if config_file is not None:
        tree = deep_merge(tree, load_config_file(config_file))
    tree = deep_merge(tree, parse_overrides(overrides or []))
    tree = deep_merge(tree, {k: v for k, v in top_level.items() if v is not None})
    task_name = tree.get("task")
    if not task_name:
        raise ConfigError(
            "no task given: name one with --task (or task= in the config); "
            f"registered: {', '.join(TASKS.names())}"
        )
    task_cls = TASKS.get(str(task_name)).obj
    presets = {DEFAULT_PRESET: {}, **task_cls.presets}
    chosen = preset or tree.get("preset") or DEFAULT_PRESET
    if chosen not in presets:
        close = difflib.get_close_matches(str(chosen), list(presets), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown preset {chosen!r} for task {task_name!r}{hint} (available: {', '.join(presets)})"
        )
    merged = deep_merge(presets[chosen], tree)
    merged["preset"] = chosen
    data_values = merged.pop("data", {})
    if not isinstance(data_values, dict):
        raise ConfigError(f"data: expected a mapping, got {data_values!r}")
    data = build_dataclass(task_cls.Data, data_values, "data")
    return dataclasses.replace(build_dataclass(RunConfig, merged), data=data)


def to_yaml(cfg_dict: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg_dict, sort_keys=False, default_flow_style=None)


__all__ = [
    "DEFAULT_PRESET",
    "NOT_IDENTITY",
    "ConfigError",
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "build_dataclass",
    "coerce",
    "config_hash",
    "parse_overrides",
    "resolve_config",
]
