"""The search space of a study: the union of what each plugin owns, narrowed or fixed by the user.

Owners and the names their parameters carry in the study (the configuration keys they set):

* the trainer (the core, :func:`trainer_search_space`): ``train.lr``, ``train.weight_decay``;
* the task (``TaskDefinition.search_space``, e.g. loss weights): ``task_args.<name>``;
* the method (``MultiTaskMethod.search_space``): ``method_args.<name>``.

Each owner calls ``trial.suggest_*`` with its own bare names; :class:`OwnedTrial` prefixes them, so
owners never collide and a trial's parameters are ``key=value`` overrides as they stand. The user
fixes a parameter with an ordinary override (``method_args.lambda_adv=0.5``: not searched) and
narrows one with a range or a list of choices (``--param KEY=LOW:HIGH`` / ``KEY=a,b`` or a YAML file
of ``KEY: [LOW, HIGH]`` / ``KEY: {choices: [a, b]}``), which must lie inside its owner's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtlbench.errors import ConfigError

SECTIONS = ("train", "task_args", "method_args")


def trainer_search_space(trial: Any) -> dict[str, Any]:
    """The trainer's own parameters: AdamW's learning rate and weight decay, log-uniform."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }


@dataclass(frozen=True)
class Dimension:
    """One searched parameter as its owner declared it (then narrowed)."""

    key: str
    kind: str  # float | int | categorical
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} ∈ {{{', '.join(map(str, self.choices))}}}"
        return f"{self.key} ∈ [{self.low:g}, {self.high:g}]{' log' if self.log else ''} ({self.kind})"


class _Recorder:
    """Stands in for a trial to read an owner's space: records each dimension, returns a valid value."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dims: dict[str, Dimension] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: Any = None
    ) -> float:
        self.dims[self.prefix + name] = Dimension(self.prefix + name, "float", low, high, log, step)
        return math.sqrt(low * high) if log else (low + high) / 2

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        self.dims[self.prefix + name] = Dimension(self.prefix + name, "int", low, high, log, step)
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.dims[self.prefix + name] = Dimension(self.prefix + name, "categorical", choices=tuple(choices))
        return next(iter(choices))


class OwnedTrial:
    """What an owner's ``search_space`` receives: an Optuna trial whose names carry the owner's
    section, with the user's narrowed ranges applied and fixed parameters answered without searching."""

    def __init__(
        self, trial: Any, prefix: str, narrowed: dict[str, Dimension], fixed: dict[str, Any]
    ) -> None:
        self._trial, self._prefix, self._narrowed, self._fixed = trial, prefix, narrowed, fixed

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: Any = None
    ) -> float:
        key = self._prefix + name
        if key in self._fixed:
            return self._fixed[key]
        dim = self._narrowed.get(key)
        low, high = (dim.low, dim.high) if dim else (low, high)
        return self._trial.suggest_float(key, low, high, log=log, step=step)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        key = self._prefix + name
        if key in self._fixed:
            return self._fixed[key]
        dim = self._narrowed.get(key)
        low, high = (dim.low, dim.high) if dim else (low, high)
        return self._trial.suggest_int(key, low, high, log=log, step=step)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        key = self._prefix + name
        if key in self._fixed:
            return self._fixed[key]
        dim = self._narrowed.get(key)
        return self._trial.suggest_categorical(key, list(dim.choices) if dim else list(choices))


def _owners(task_cls: type, method_cls: type) -> list[tuple[str, Any]]:
    task_space = getattr(task_cls, "search_space", None)
    return [
        ("train.", trainer_search_space),
        ("task_args.", task_space if task_space is not None else (lambda trial: {})),
        ("method_args.", method_cls.search_space),
    ]


def declared_space(task_cls: type, method_cls: type) -> dict[str, Dimension]:
    """Every parameter the trainer, the task and the method offer, by configuration key."""
    dims: dict[str, Dimension] = {}
    for prefix, space in _owners(task_cls, method_cls):
        recorder = _Recorder(prefix)
        space(recorder)
        dims.update(recorder.dims)
    return dims


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" in ("train", "task_args", "method_args"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalar(text: str) -> Any:
    """A number where the text is one (YAML 1.1 reads ``1e-3`` as a string), else YAML's reading."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_param_option(text: str) -> tuple[str, Any]:
    """``KEY=LOW:HIGH`` (a range) or ``KEY=a,b,c`` (choices) or ``KEY=value`` (fixed)."""
    key, sep, spec = text.partition("=")
    if not sep or not key.strip() or not spec.strip():
        raise ConfigError(f"--param {text!r}: expected KEY=LOW:HIGH, KEY=a,b,... or KEY=value")
    key, spec = key.strip(), spec.strip()
    if ":" in spec:
        low, _, high = spec.partition(":")
        return key, [_scalar(low), _scalar(high)]
    if "," in spec:
        return key, {"choices": [_scalar(s) for s in spec.split(",") if s.strip()]}
    return key, _scalar(spec)


def load_space_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"search-space file {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"search-space file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"search-space file {str(path)!r}: expected a mapping KEY: [LOW, HIGH] | {{choices: [...]}}"
        )
    return _flat(data)


@dataclass
class SearchSpace:
    """The declared space, the user's narrowing and fixing, and the resulting searched dimensions."""

    declared: dict[str, Dimension]
    narrowed: dict[str, Dimension]
    fixed: dict[str, Any]

    @property
    def searched(self) -> dict[str, Dimension]:
        return {k: self.narrowed.get(k, d) for k, d in self.declared.items() if k not in self.fixed}

    def suggest(self, trial: Any, task_cls: type, method_cls: type) -> dict[str, Any]:
        """A trial's values as a configuration tree (``{"train": {"lr": ...}, "method_args": {...}}``)."""
        tree: dict[str, Any] = {}
        for prefix, space in _owners(task_cls, method_cls):
            values = space(OwnedTrial(trial, prefix, self.narrowed, self.fixed))
            if values:
                tree[prefix.rstrip(".")] = dict(values)
        return tree


def _narrow(key: str, dim: Dimension, spec: Any) -> Dimension | None:
    """The narrowed dimension, or ``None`` when ``spec`` fixes one value; raises when contradictory."""
    if dim.kind == "categorical":
        choices = spec.get("choices") if isinstance(spec, dict) else spec if isinstance(spec, list) else None
        if choices is None:
            return None
        if not choices:
            raise ConfigError(f"search space: {key} has no choices left")
        unknown = [c for c in choices if c not in dim.choices]
        if unknown:
            raise ConfigError(
                f"search space: {key} choices {unknown} are not among its owner's "
                f"({', '.join(map(str, dim.choices))})"
            )
        return Dimension(key, "categorical", choices=tuple(choices))
    if isinstance(spec, dict):
        if set(spec) - {"low", "high", "log"}:
            raise ConfigError(f"search space: {key} is {dim.kind}; give [LOW, HIGH] or {{low:, high:}}")
        spec = [spec.get("low", dim.low), spec.get("high", dim.high)]
    if not isinstance(spec, list):
        return None
    spec = [_scalar(v) if isinstance(v, str) else v for v in spec]
    if len(spec) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
        raise ConfigError(f"search space: {key} needs a numeric range [LOW, HIGH], got {spec}")
    low, high = spec
    if low > high:
        raise ConfigError(f"search space: {key} range [{low}, {high}] is empty (LOW > HIGH)")
    if low < dim.low or high > dim.high:
        raise ConfigError(
            f"search space: {key} range [{low:g}, {high:g}] is outside its owner's "
            f"[{dim.low:g}, {dim.high:g}]"
        )
    if dim.kind == "int" and (int(low) != low or int(high) != high):
        raise ConfigError(f"search space: {key} is an integer; got range [{low}, {high}]")
    cast = int if dim.kind == "int" else float
    return Dimension(key, dim.kind, cast(low), cast(high), dim.log, dim.step)


def build_space(
    task_cls: type,
    method_cls: type,
    overrides: dict[str, Any],
    narrowing: dict[str, Any],
) -> SearchSpace:
    """Check the user's narrowing against the owners' spaces; raise one clear line when it names an
    unknown parameter, contradicts an owner or a fixed value, or leaves nothing to search."""
    declared = declared_space(task_cls, method_cls)
    flat_overrides = _flat(overrides)
    fixed = {k: _scalar(v) if isinstance(v, str) else v for k, v in flat_overrides.items() if k in declared}
    narrowed: dict[str, Dimension] = {}
    for key, spec in narrowing.items():
        if key not in declared:
            available = ", ".join(declared) or "none"
            raise ConfigError(f"search space: {key!r} is not a searched parameter (available: {available})")
        dim = _narrow(key, declared[key], spec)
        if dim is None:  # a single value: fixed
            if key in fixed and fixed[key] != spec:
                raise ConfigError(f"search space: {key} is fixed twice, to {fixed[key]!r} and to {spec!r}")
            fixed[key] = spec
            continue
        if key in fixed:
            raise ConfigError(
                f"search space: {key} is both fixed ({key}={fixed[key]}) and searched ({dim.describe()})"
            )
        narrowed[key] = dim
    space = SearchSpace(declared, narrowed, fixed)
    if not space.searched:
        owned = ", ".join(declared) or "none"
        raise ConfigError(f"search space is empty: every parameter is fixed (searchable: {owned})")
    return space
