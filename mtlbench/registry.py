"""Registries for tasks, methods and backbones.

One registry per kind, a bare decorator to add to it, ``create``/``names`` with
shell-style wildcards. Duplicate names raise; an unknown name answers with the
closest registered names. Third-party plugins are found through the entry-point
groups ``mtlbench.tasks``, ``mtlbench.methods`` and ``mtlbench.backbones`` and are
imported only when one of their names is asked for.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .discovery import builtin_catalog, description_from_source

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown task, method or backbone name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    module: str


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry(Generic[T]):
    """A named collection of factories of one kind (``tasks``, ``methods``, ``backbones``)."""

    def __init__(self, kind: str, builtin: dict[str, tuple[str, str]] | None = None) -> None:
        """``builtin`` maps name → (module, description); ``None`` reads the built-ins of ``kind``
        from the plugin package's source files on first use (:mod:`mtlbench.discovery`)."""
        self.kind = kind
        self.group = f"mtlbench.{kind}"
        self._given_builtin = builtin
        self._entries: dict[str, Entry[T]] = {}

    @property
    def _builtin(self) -> dict[str, tuple[str, str]]:
        if self._given_builtin is None:
            self._given_builtin = builtin_catalog(self.kind)
        return self._given_builtin

    # -- registration -------------------------------------------------------------
    def register(self, name: str | None = None, *, description: str | None = None) -> Callable[[T], T]:
        """Decorator adding a class or factory under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries:
                prior = self._entries[key]
                raise ValueError(
                    f"{self.kind[:-1]} {key!r} is already registered by {prior.module}; "
                    f"{getattr(obj, '__module__', '?')} tried to register it again"
                )
            desc = description if description is not None else _first_line(obj.__doc__)
            self._entries[key] = Entry(key, obj, desc, getattr(obj, "__module__", "?"))
            return obj

        return add

    # -- lookup -------------------------------------------------------------------
    def _plugin_entry_points(self) -> list[Any]:
        return list(entry_points(group=self.group))

    def _load_plugin(self, name: str) -> bool:
        for ep in self._plugin_entry_points():
            if ep.name != name:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the suite
                dist = getattr(ep, "dist", None)
                package = getattr(dist, "name", None) or ep.value
                warnings.warn(
                    f"mtlbench plugin {name!r} from package {package!r} failed to load: {exc}",
                    stacklevel=3,
                )
                return False
            if name not in self._entries:
                self.register(name)(obj)
            return True
        return False

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``, importing its module (built-in or plugin) on first use."""
        if name not in self._entries and name in self._builtin:
            importlib.import_module(self._builtin[name][0])
        if name not in self._entries and not self._load_plugin(name):
            known = self.names()
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind[:-1]} {name!r}{hint} (registered: {', '.join(known) or 'none'})"
            )
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the registered ``name`` with the given arguments."""
        return self.get(name).obj(*args, **kwargs)  # type: ignore[operator]

    def names(self, pattern: str = "*", include_plugins: bool = True) -> list[str]:
        """Registered names matching a shell-style wildcard, sorted (nothing is imported)."""
        found = set(self._entries) | set(self._builtin)
        if include_plugins:
            found.update(ep.name for ep in self._plugin_entry_points())
        return sorted(n for n in found if fnmatch.fnmatchcase(n, pattern))

    def describe(self, pattern: str = "*") -> list[tuple[str, str]]:
        """``(name, one-line description)`` pairs, read from the source without importing the
        modules (built-ins and plugins alike); a plugin whose source cannot be read is loaded."""
        plugins = {ep.name: ep for ep in self._plugin_entry_points()}
        rows = []
        for n in self.names(pattern):
            if n in self._entries:
                rows.append((n, self._entries[n].description))
            elif n in self._builtin:
                rows.append((n, self._builtin[n][1]))
            else:
                module, _, attribute = plugins[n].value.partition(":")
                described = description_from_source(module.strip(), attribute.strip())
                if described is not None:
                    rows.append((n, described))
                    continue
                try:
                    rows.append((n, self.get(n).description))
                except UnknownNameError:
                    rows.append((n, "(plugin failed to load)"))
        return rows

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True


TASKS: Registry[Any] = Registry("tasks")
METHODS: Registry[Any] = Registry("methods")
BACKBONES: Registry[Any] = Registry("backbones")

register_task = TASKS.register
register_method = METHODS.register
register_backbone = BACKBONES.register


def create_task(name: str, *args: Any, **kwargs: Any) -> Any:
    return TASKS.create(name, *args, **kwargs)


def create_method(name: str, *args: Any, **kwargs: Any) -> Any:
    return METHODS.create(name, *args, **kwargs)


def create_backbone(name: str, *args: Any, **kwargs: Any) -> Any:
    return BACKBONES.create(name, *args, **kwargs)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.names(pattern)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)
