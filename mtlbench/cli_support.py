"""What every command of the ``mtlbench`` CLI shares, the core's and those a task family adds.

A task family adds commands with an optional light module ``tasks/<family>/cli.py`` (typer only at
import time; heavy imports inside the commands) that may define:

- ``register_commands(app: typer.Typer) -> None``: add its commands (e.g. thyroid's
  ``ablate-features``) to the top-level app;
- ``DATA_FORMATS: tuple[str, ...]`` and ``check_data_set(root, data_format, options) ->
  (text, report_dict, n_problems)``: the data-set layouts that ``mtlbench data check --format``
  accepts for it.

Third-party packages do the same through the entry-point group ``mtlbench.cli`` (a module).
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from types import ModuleType
from typing import NoReturn

import typer

from mtlbench.errors import ConfigError, DataError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
CLI_GROUP = "mtlbench.cli"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def make_console():  # type: ignore[no-untyped-def]
    """A rich console that does not wrap tables at 80 columns when stdout is a file or a pipe."""
    import os

    from rich.console import Console

    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=160)
    return out


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (one clear line), not a bug (a traceback)."""
    from mtlbench.registry import UnknownNameError

    return (ConfigError, DataError, UnknownNameError)


def task_cli_modules() -> list[ModuleType]:
    """The built-in task families' ``cli`` modules, then the third-party ones, in that order."""
    from mtlbench.discovery import package_folders

    modules = []
    for folder in package_folders("mtlbench.tasks"):
        for family in sorted(p for p in folder.iterdir() if (p / "cli.py").is_file()):
            modules.append(importlib.import_module(f"mtlbench.tasks.{family.name}.cli"))
    for ep in entry_points(group=CLI_GROUP):
        try:
            modules.append(ep.load())
        except Exception as exc:  # a broken plugin must not break the CLI
            package = getattr(getattr(ep, "dist", None), "name", None) or ep.value
            warnings.warn(
                f"mtlbench CLI plugin {ep.name!r} from {package!r} failed to load: {exc}", stacklevel=2
            )
    return modules


def data_formats(modules: list[ModuleType]) -> dict[str, ModuleType]:
    """Data-set layout name → the task ``cli`` module that checks it."""
    formats: dict[str, ModuleType] = {}
    for module in modules:
        for name in getattr(module, "DATA_FORMATS", ()):
            formats.setdefault(name, module)
    return formats
