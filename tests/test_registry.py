"""Registries: decorator, wildcards, duplicates, close-match errors, plugins, the catalog."""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import EntryPoint

import pytest

from mtlbench.discovery import builtin_catalog
from mtlbench.registry import BACKBONES, METHODS, TASKS, Registry, UnknownNameError


def test_wildcards_and_builtins() -> None:
    assert "rlar" in METHODS.names("*")
    assert METHODS.names("rl*") == ["rlar", "rlw"]
    assert {"aligned_mtl", "nash_mtl", "rep_mtl"} <= set(METHODS.names("*_mtl"))
    assert "unet_small" in BACKBONES.names("*unet*")
    assert {"thyroid", "multidigits"} <= set(TASKS.names())


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError) as info:
        METHODS.get("rlr")
    assert "did you mean 'rlar'" in str(info.value)
    with pytest.raises(UnknownNameError, match="unknown task 'thyriod'; did you mean 'thyroid'"):
        TASKS.get("thyriod")


def test_duplicate_names_raise() -> None:
    reg: Registry[object] = Registry("widgets", {})

    @reg.register("a")
    class A:
        """First."""

    with pytest.raises(ValueError, match="'a' is already registered"):

        @reg.register("a")
        class B:
            """Second."""

    assert reg.get("a").obj is A
    assert reg.get("a").description == "First."


@pytest.mark.parametrize("kind", ["tasks", "methods", "backbones"])
def test_catalog_matches_what_modules_register(kind: str) -> None:
    registry = {"tasks": TASKS, "methods": METHODS, "backbones": BACKBONES}[kind]
    for name, (module, description) in builtin_catalog(kind).items():
        importlib.import_module(module)
        entry = registry.get(name)
        assert entry.module == module, name
        assert entry.description == description, f"catalog description of {name} differs from its docstring"
    registered_builtins = {n for n, e in registry._entries.items() if e.module.startswith("mtlbench.")}
    missing = registered_builtins - set(builtin_catalog(kind))
    assert not missing, f"registered but not found in the source: {missing}"


def test_plugins_load_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_mtl_plugin")

    class Fancy:
        """A plugin method."""

    module.Fancy = Fancy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_mtl_plugin", module)
    reg: Registry[object] = Registry("methods", {})
    eps = [
        EntryPoint(name="fancy", value="fake_mtl_plugin:Fancy", group="mtlbench.methods"),
        EntryPoint(name="broken", value="no_such_module_xyz:Thing", group="mtlbench.methods"),
    ]
    monkeypatch.setattr(reg, "_plugin_entry_points", lambda: eps)
    assert reg.names() == ["broken", "fancy"]
    assert reg._entries == {}  # listing names imported nothing
    assert reg.get("fancy").obj is Fancy
    assert reg.get("fancy").description == "A plugin method."
    with pytest.warns(UserWarning, match="'broken'.*failed to load"), pytest.raises(UnknownNameError):
        reg.get("broken")
