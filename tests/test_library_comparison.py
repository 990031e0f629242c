"""``benchmarks/library_comparison.py``: one round on a tiny thyroid model — report schema and agreement."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from mtlbench.api.gradients import step_generator
from mtlbench.methods.pcgrad import pcgrad_weights

pytest.importorskip("torchjd")
pytest.importorskip("cvxpy")
if importlib.util.find_spec("LibMTL") is None:
    pytest.skip("LibMTL is not installed (a test extra)", allow_module_level=True)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY: dict[str, Any] = {
    "size": 32,
    "batch": 4,
    "widths": (8, 16, 32, 64),
    "embedding_dim": 24,
    "classifier_hidden": 16,
    "rounds": 1,
    "warmup": 0,
    "threads": 1,
}


@pytest.fixture(scope="module")
def lc() -> Iterator[ModuleType]:
    """The script as a module (its folder on the path for its ``thyroid_model`` helper)."""
    sys.path.insert(0, str(BENCHMARKS))
    name = "library_comparison"
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def report(lc: ModuleType) -> dict[str, Any]:
    return lc.compare(lc.ComparisonSettings(**TINY))


def test_report_schema(report: dict[str, Any]) -> None:
    json.dumps(report, allow_nan=False)
    for key in ("settings", "model", "device", "load_average", "versions", "git_commit", "rows", "agreement"):
        assert key in report, key
    assert report["model"]["tasks"] == ["seg", "cls", "clin"]
    assert report["device"]["threads"] == 1 and report["settings"]["rounds"] == 1
    assert report["versions"]["LibMTL"] == "1.1.5" and report["versions"]["torchjd"].startswith("0.18")
    assert {(r["method"], r["implementation"]) for r in report["rows"]} == {
        (m, i) for m in ("pcgrad", "cagrad", "mgda") for i in ("ours", "libmtl", "torchjd")
    }
    for row in report["rows"]:
        assert row["error"] is None, row
        assert len(row["times_s"]) == 1 and row["median_s"] > 0 and row["iqr_s"] == 0
        assert row["ratio_to_ours"] == 1.0 if row["implementation"] == "ours" else row["ratio_to_ours"] > 0


def test_every_library_agrees_with_ours(report: dict[str, Any]) -> None:
    rows = {(a["method"], a["implementation"]): a for a in report["agreement"]}
    assert set(rows) == {("pcgrad", "ours")} | {
        (m, lib) for m in ("pcgrad", "cagrad", "mgda") for lib in ("libmtl", "torchjd")
    }
    for key, row in rows.items():
        assert row["agree"], (key, row)
        assert row["shared_rel_error"] <= row["shared_tolerance"]
        assert row["heads_rel_error"] <= row["heads_tolerance"]


def test_pcgrad_orders_contain_every_seeded_result(lc: ModuleType) -> None:
    g = torch.tensor([[1.0, 0.0, 0.2], [-0.8, 0.6, 0.0], [-0.3, -0.9, 0.4]], dtype=torch.float64)
    gram = g @ g.T
    candidates = lc.pcgrad_order_results(gram, project_on_self=False)
    assert 1 < len(candidates) <= 8  # two orders per task, some coinciding
    for seed in range(10):
        ours = pcgrad_weights(gram, step_generator(seed, 0))
        assert min(float((ours - c).abs().max()) for c in candidates) < 1e-12
    two = lc.pcgrad_order_results(gram[:2, :2], project_on_self=False)
    assert len(two) == 1  # with two tasks the order does not matter


def test_a_failing_implementation_is_a_result_row(lc: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(step: Any, name: str) -> Any:
        raise RuntimeError("no such aggregator")

    monkeypatch.setitem(lc.BUILDERS, "torchjd", broken)
    out = lc.compare(lc.ComparisonSettings(**{**TINY, "methods": ("mgda",), "libraries": ("torchjd",)}))
    rows = {r["implementation"]: r for r in out["rows"]}
    assert rows["torchjd"]["error"] == "RuntimeError: no such aggregator"
    assert rows["torchjd"]["median_s"] is None and rows["torchjd"]["times_s"] == []
    assert rows["ours"]["error"] is None and out["agreement"] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ("pcgrad", "upgrad")}, "`methods`"),
        ({"libraries": ()}, "`libraries`"),
        ({"rounds": 0}, "`rounds = 0`"),
        ({"warmup": -1}, "`warmup = -1`"),
    ],
)
def test_bad_settings_are_rejected(lc: ModuleType, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lc.ComparisonSettings(**{**TINY, **change})
