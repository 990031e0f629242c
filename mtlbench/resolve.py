"""Check a :class:`RunConfig` against the registries and fill every default.

After :func:`resolve_run` the configuration names existing entries, every ``*_args`` section holds
the complete, type-checked parameters of the chosen task, method and backbone, and the run id is
the hash of that complete configuration. Nothing is built and nothing is written here.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, replace
from typing import Any, get_type_hints

from mtlbench.config import ConfigError, RunConfig, _unknown_key, build_dataclass, coerce
from mtlbench.registry import BACKBONES, METHODS, TASKS, Entry


@dataclass
class ResolvedRun:
    config: RunConfig
    task_entry: Entry[Any]
    method_entry: Entry[Any]
    backbone_entry: Entry[Any]
    task_params: Any
    method_params: Any

    @property
    def run_id(self) -> str:
        return self.config.run_id()


def _params_from_dataclass(cls: type, values: dict[str, Any], section: str) -> tuple[Any, dict[str, Any]]:
    try:
        params = build_dataclass(cls, values, section)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from None
    return params, dataclasses.asdict(params)


def _kwargs_from_signature(factory: Any, values: dict[str, Any], section: str) -> dict[str, Any]:
    """Validate ``values`` against the keyword options of a backbone factory; return all options."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    sig = inspect.signature(target)
    try:
        hints = get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to no type checks
        hints = {}
    options = {
        name: p
        for name, p in sig.parameters.items()
        if name not in ("self", "in_channels") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    resolved: dict[str, Any] = {}
    for key, value in values.items():
        if key not in options:
            raise _unknown_key(f"{section}.{key}", list(options), section)
        resolved[key] = coerce(value, hints.get(key, Any), f"{section}.{key}")
    for name, p in options.items():
        if name not in resolved:
            if p.default is inspect.Parameter.empty:
                raise ConfigError(f"{section}.{name} is required")
            resolved[name] = p.default
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


def resolve_run(config: RunConfig) -> ResolvedRun:
    """Validate names and per-entry parameters; raise :class:`ConfigError`/``UnknownNameError``."""
    task_entry = TASKS.get(config.task)
    method_entry = METHODS.get(config.method)
    backbone_entry = BACKBONES.get(config.backbone)

    task_params, task_args = _params_from_dataclass(task_entry.obj.Params, config.task_args, "task_args")
    method_params, method_args = _params_from_dataclass(
        method_entry.obj.Params, config.method_args, "method_args"
    )
    backbone_args = _kwargs_from_signature(backbone_entry.obj, config.backbone_args, "backbone_args")
    task_cls = task_entry.obj
    if not isinstance(config.data, task_cls.Data):
        raise ConfigError(
            f"the data section was built as {type(config.data).__name__}, but task {config.task!r} "
            f"expects {task_cls.Data.__name__}; build the configuration with resolve_config"
        )
    train = replace(
        config.train,
        monitor=config.train.monitor or task_cls.default_monitor,
        monitor_mode=config.train.monitor_mode or task_cls.default_monitor_mode,
    )
    resolved = replace(
        config, train=train, task_args=task_args, method_args=method_args, backbone_args=backbone_args
    )
    return ResolvedRun(resolved, task_entry, method_entry, backbone_entry, task_params, method_params)
