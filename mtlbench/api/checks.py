"""One validation helper for every method's hyper-parameters, with torchjd-style messages.

``check_param("alpha", value, kind="float", low=0)`` raises
``ValueError("Parameter `alpha` should be a finite number >= 0. Found `alpha = -0.1`.")``; a
method's ``validate()`` is then a list of such calls (and :func:`check_tasks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

Kind = Literal["int", "float", "bool", "choice"]
_WORDS = {1: "one", 2: "two", 3: "three"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(
    kind: Kind, low: Any, high: Any, low_open: bool, high_open: bool, choices: Any, finite: bool = True
) -> str:
    if kind == "bool":
        return "True or False"
    if kind == "choice":
        return "one of " + ", ".join(str(c) for c in choices)
    text = "an integer" if kind == "int" else ("a finite number" if finite else "a number")
    if low is not None:
        text += f" {'>' if low_open else '>='} {low}"
    if high is not None:
        text += f"{' and' if low is not None else ''} {'<' if high_open else '<='} {high}"
    return text


def check_param(
    name: str,
    value: Any,
    kind: Kind = "float",
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[Any] | None = None,
    allow_none: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raise ``ValueError("Parameter `name` should be <...>. Found `name = value`.")`` unless valid.

    ``kind``: ``int`` (an int, not a bool), ``float`` (a finite int or float, not a bool), ``bool``,
    ``choice`` (``value in choices``, bools never match numbers). ``low``/``high`` bound numbers
    (inclusive unless ``*_open``); ``allow_none`` accepts ``None``, ``allow_inf`` ±inf (bounds apply).
    """
    if allow_none and value is None:
        return
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "choice":
        ok = not isinstance(value, bool) and value in tuple(choices or ())
    else:
        ok = _is_number(value) and (math.isfinite(value) or (allow_inf and not math.isnan(value)))
        if kind == "int":
            ok = ok and isinstance(value, int)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
    if not ok:
        what = _describe(kind, low, high, low_open, high_open, choices, not allow_inf)
        if allow_none:
            what = f"None or {what}"
        raise ValueError(f"Parameter `{name}` should be {what}. Found `{name} = {value!r}`.")


def check_tasks(method: str, task_names: Sequence[str], minimum: int = 1) -> None:
    """Raise ``ValueError`` when fewer than ``minimum`` tasks are given."""
    if len(task_names) < minimum:
        count = _WORDS.get(minimum, str(minimum))
        raise ValueError(
            f"{method} needs at least {count} task{'s' if minimum > 1 else ''}, got {tuple(task_names)}"
        )
