"""Find the built-in tasks, methods and backbones by reading their source files, without importing them.

A built-in plugin is any module under ``mtlbench.methods``, ``mtlbench.tasks`` or
``mtlbench.backbones`` whose class or function carries the registry's decorator
(``@register_method("name")``, ``@register_task(...)``, ``@register_backbone(...)``, or
``@METHODS.register(...)`` and its siblings). Its one-line description is the decorator's
``description=`` or else the first line of the decorated object's docstring — exactly what the
registry records when the module is imported (``tests/test_registry.py`` checks that the two agree).

So adding a built-in is one new file: no import list and no catalog to keep by hand, and
``mtlbench --help`` and ``mtlbench list`` answer without importing torch.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

#: kind → (package holding its built-ins, decorator function name, registry constant name)
PLUGIN_PACKAGES: dict[str, tuple[str, str, str]] = {
    "tasks": ("mtlbench.tasks", "register_task", "TASKS"),
    "methods": ("mtlbench.methods", "register_method", "METHODS"),
    "backbones": ("mtlbench.backbones", "register_backbone", "BACKBONES"),
}


def package_folders(package: str) -> list[Path]:
    """The folders of ``package`` (its ``__init__`` runs, so plugin packages keep theirs light)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _is_registration(decorator: ast.expr, function: str, constant: str) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Name):
        return target.id == function
    return (
        isinstance(target, ast.Attribute)
        and target.attr == "register"
        and isinstance(target.value, ast.Name)
        and target.value.id == constant
    )


def _registration(decorator: ast.expr, node: ast.ClassDef | ast.FunctionDef) -> tuple[str, str]:
    """(registered name, description) of one decorator, as :meth:`Registry.register` computes them."""
    name, description = node.name, None
    if isinstance(decorator, ast.Call):
        if decorator.args and isinstance(decorator.args[0], ast.Constant):
            name = str(decorator.args[0].value)
        for kw in decorator.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                name = str(kw.value.value)
            if kw.arg == "description" and isinstance(kw.value, ast.Constant):
                description = str(kw.value.value)
    if description is None:
        description = _first_line(ast.get_docstring(node))
    return name, description


def registrations_in_source(source: str, function: str, constant: str) -> list[tuple[str, str]]:
    """Every ``(name, description)`` that the decorators in ``source`` register."""
    if function not in source and f"{constant}.register" not in source:
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            for decorator in node.decorator_list:
                if _is_registration(decorator, function, constant):
                    found.append(_registration(decorator, node))
    return found


def description_from_source(module: str, attribute: str) -> str | None:
    """First docstring line of ``module.attribute`` read from its source (a plugin's entry point),
    or ``None`` when the source cannot be read that way; nothing but parent packages is imported."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(spec.origin).read_text("utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == attribute:
            return _first_line(ast.get_docstring(node))
    return None


def scan_folder(folder: Path, package: str, kind: str) -> dict[str, tuple[str, str]]:
    """name → (module, description) for every ``kind`` registered by the ``.py`` files under
    ``folder``, which is imported as ``package``."""
    _, function, constant = PLUGIN_PACKAGES[kind]
    catalog: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder).with_suffix("")
        if "__pycache__" in relative.parts:
            continue
        module = ".".join([package, *(p for p in relative.parts if p != "__init__")])
        for name, description in registrations_in_source(path.read_text("utf-8"), function, constant):
            if name in catalog and catalog[name][0] != module:
                raise ValueError(
                    f"built-in {kind[:-1]} {name!r} is registered twice: in {catalog[name][0]} and {module}"
                )
            catalog[name] = (module, description)
    return catalog


@cache
def builtin_catalog(kind: str) -> dict[str, tuple[str, str]]:
    """name → (module that registers it, one-line description) for the built-ins of ``kind``."""
    package = PLUGIN_PACKAGES[kind][0]
    catalog: dict[str, tuple[str, str]] = {}
    for folder in package_folders(package):
        catalog.update(scan_folder(folder, package, kind))
    return catalog
