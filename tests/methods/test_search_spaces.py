"""Every registered method exposes an Optuna search space whose suggestions build valid parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mtlbench.registry import METHODS, list_methods
from mtlbench.resolve import _params_from_dataclass


class RecordingTrial:
    """Stands in for ``optuna.Trial``: returns the low end / first choice and records each call."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[str, Any]] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: Any = None
    ) -> float:
        assert low <= high and (not log or low > 0), (name, low, high)
        self.calls[name] = ("float", (low, high))
        return (low * high) ** 0.5 if log else (low + high) / 2

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        assert low <= high, (name, low, high)
        self.calls[name] = ("int", (low, high))
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        assert choices, name
        self.calls[name] = ("categorical", tuple(choices))
        return choices[-1]


@pytest.mark.parametrize("name", list_methods())
def test_search_space_suggests_valid_parameters(name: str) -> None:
    if name == "libmtl":
        from mtlbench.libmtl_compat import import_libmtl

        try:
            import_libmtl("weighting")
        except ModuleNotFoundError:
            pytest.skip("LibMTL is not installed")
    cls = METHODS.get(name).obj
    trial = RecordingTrial()
    suggested = cls.search_space(trial)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    assert set(suggested) <= fields, f"{name} suggests unknown parameters {set(suggested) - fields}"
    assert set(suggested) == set(trial.calls)
    params, _ = _params_from_dataclass(cls.Params, suggested, "method_args")
    cls(("seg", "cls", "clin"), params)  # passes validation
