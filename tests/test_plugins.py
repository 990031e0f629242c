"""Adding things: a built-in is one new file; a third-party package plugs in through entry points;
the core imports no plugin; packaging finds every plugin package."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from mtlbench.discovery import builtin_catalog, scan_folder
from tests.test_cli import mtlbench

ROOT = Path(__file__).resolve().parents[1]


def plugin_modules_after(imports: str) -> list[str]:
    code = (
        f"import json, sys, {imports}; print(json.dumps(sorted(m for m in sys.modules "
        "if m.startswith(('mtlbench.methods.', 'mtlbench.tasks.')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_importing_the_core_loads_no_method_or_task_module() -> None:
    assert plugin_modules_after("mtlbench.trainer, mtlbench.runner, mtlbench.resolve, mtlbench.cv") == []
    # the CLI loads each task family's light `cli` module (its commands), nothing else of it
    loaded = plugin_modules_after("mtlbench.cli")
    assert "mtlbench.tasks.thyroid.cli" in loaded
    assert all(m.endswith(".cli") or m.count(".") == 2 for m in loaded), loaded


def test_the_core_does_not_import_builtin_plugins_in_its_source() -> None:
    offenders = []
    for path in (ROOT / "mtlbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if n.startswith(("mtlbench.methods.", "mtlbench.tasks."))
            ]
    assert offenders == []


def test_a_new_builtin_method_is_one_new_file(tmp_path: Path) -> None:
    folder = tmp_path / "methods"
    folder.mkdir()
    source = (ROOT / "methods" / "vanilla.py").read_text()
    new = source.replace('@register_method("vanilla")', '@register_method("probe_sum")').replace(
        '"""Weighted sum of the task losses', '"""Probe: weighted sum of the task losses'
    )
    (folder / "probe_sum.py").write_text(new)
    found = scan_folder(folder, "mtlbench.methods", "methods")
    assert found == {
        "probe_sum": (
            "mtlbench.methods.probe_sum",
            "Probe: weighted sum of the task losses with the task's fixed weights (one backward pass).",
        )
    }
    assert "vanilla" in builtin_catalog("methods")


def test_duplicate_builtin_names_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "methods"
    folder.mkdir()
    for name in ("a.py", "b.py"):
        shutil.copy(ROOT / "methods" / "vanilla.py", folder / name)
    try:
        scan_folder(folder, "pkg", "methods")
    except ValueError as exc:
        assert "'vanilla' is registered twice" in str(exc)
    else:
        raise AssertionError("a duplicate name was accepted")


def test_a_third_party_plugin_trains_through_mtlbench_run(tmp_path: Path) -> None:
    listed = mtlbench("list", cwd=tmp_path)
    for name in ("twoshapes", "scaled_sum", "tiny_cnn"):
        assert name in listed.stdout, name
    result = mtlbench(
        "run",
        "--task",
        "twoshapes",
        "--method",
        "scaled_sum",
        "--backbone",
        "tiny_cnn",
        "method_args.scale=0.5",
        f"output_dir={tmp_path / 'runs'}",
        "train.progress=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.split("run folder: ")[1].split()[0])
    saved = json.loads((folder / "result.json").read_text())
    assert (saved["task"], saved["method"], saved["backbone"]) == ("twoshapes", "scaled_sum", "tiny_cnn")
    assert saved["config"]["method_args"] == {"scale": 0.5}
    bad = mtlbench(
        "run", "--task", "twoshapes", "--method", "scaled_sum", "method_args.scale=-1", cwd=tmp_path
    )
    assert bad.returncode == 2 and "`scale = -1.0`" in bad.stderr


def _setup_packages() -> list[str]:
    spec = importlib.util.spec_from_file_location("mtlbench_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.packages()


def test_packaging_finds_every_plugin_package() -> None:
    packages = set(_setup_packages())
    roots = {
        "mtlbench": ROOT / "mtlbench",
        "mtlbench.methods": ROOT / "methods",
        "mtlbench.tasks": ROOT / "tasks",
    }
    for name, folder in roots.items():
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            if not any(sub.glob("*.py")):
                continue
            assert (sub / "__init__.py").is_file(), (
                f"{sub} holds modules but no __init__.py: a wheel drops it"
            )
            dotted = ".".join([name, *sub.relative_to(folder).parts])
            assert dotted in packages, dotted
