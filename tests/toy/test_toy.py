"""The CAGrad toy problem: formula values, minima and Pareto set, trajectories, the task entry, the plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.api.method import MultiTaskMethod, StepInputs
from mtlbench.plots.toy import plot_toy
from mtlbench.registry import METHODS, TASKS, Entry, list_methods
from mtlbench.toy.problem import (
    AVERAGE_MINIMUM,
    CAGRAD_STARTS,
    F1_MINIMUM,
    F2_MINIMUM,
    LOG_FLOOR,
    MINIMUM_VALUE,
    NASH_MTL_STARTS,
    ToyParams,
    losses,
    pareto_set,
    pareto_x2,
)
from mtlbench.toy.trajectories import run_trajectory, skip_reason

T1 = math.tanh(1.0)
T2 = math.tanh(2.0)


def f64(*point: float) -> torch.Tensor:
    return torch.tensor(point, dtype=torch.float64)


def grad_at(point: tuple[float, float], which: int | None) -> np.ndarray:
    """Gradient of f1 (0), f2 (1) or f1 + f2 (None) at ``point``, in float64."""
    x = f64(*point).requires_grad_()
    f1, f2 = losses(x)
    value = f1 + f2 if which is None else (f1, f2)[which]
    return torch.autograd.grad(value, x)[0].numpy()


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        # below the x1 axis only the bowls act: c2 = tanh(1) at x2 = -2
        ((1.0, -2.0), (T1 * ((36 + 3.6) / 10 - 20), T1 * ((64 + 3.6) / 10 - 20))),
        # above it only logs: |-(x1+7)/2 + tanh 2| = 2 - tanh 2, |(3-x1)/2 - tanh 2 + 2| = 5 - tanh 2
        ((-3.0, 2.0), (T1 * (math.log(2 - T2) + 6), T1 * (math.log(5 - T2) + 6))),
        ((0.0, 0.0), (0.0, 0.0)),
        # on the floor of f1's valley, x1 = 2 tanh(x2) - 7, the logarithm is clamped at 5e-6
        ((2 * math.tanh(5.0) - 7, 5.0), (math.tanh(2.5) * (math.log(LOG_FLOOR) + 6), None)),
    ],
)
def test_values_match_the_formula(point: tuple[float, float], expected: tuple[float, float | None]) -> None:
    f1, f2 = losses(f64(*point))
    assert float(f1) == pytest.approx(expected[0], abs=1e-9)
    if expected[1] is not None:
        assert float(f2) == pytest.approx(expected[1], abs=1e-9)
    assert (round(float(losses(f64(1.0, -2.0))[0]), 4), round(float(losses(f64(-3.0, 2.0))[1]), 4)) == (
        -12.216,
        5.6322,
    )


def test_batched_shapes_and_f1_scale() -> None:
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    f1, f2 = losses(x)
    assert f1.shape == f2.shape == (3, 4)
    g1, g2 = losses(x, f1_scale=0.1)
    torch.testing.assert_close(g1, 0.1 * f1)
    torch.testing.assert_close(g2, f2)
    with pytest.raises(ValueError, match="last dimension of 2"):
        losses(torch.zeros(3))


@pytest.mark.parametrize(("minimum", "which"), [(F1_MINIMUM, 0), (F2_MINIMUM, 1)])
def test_known_minima_are_stationary_minima(minimum: tuple[float, float], which: int) -> None:
    assert np.abs(grad_at(minimum, which)).max() < 1e-9
    value = float(losses(f64(*minimum))[which])
    assert value == pytest.approx(MINIMUM_VALUE, abs=1e-8)
    angles = torch.linspace(0, 2 * math.pi, 17, dtype=torch.float64)[:-1]
    ring = f64(*minimum) + 1e-2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    assert bool((losses(ring)[which] > value).all())


def test_pareto_set_is_where_the_gradients_oppose() -> None:
    front = pareto_set(9)
    assert front[0] == pytest.approx(F2_MINIMUM) and front[-1] == pytest.approx(F1_MINIMUM)
    assert float(pareto_x2(0.0)) == pytest.approx(AVERAGE_MINIMUM[1], abs=1e-9)
    assert float(pareto_x2(0.0)) == pytest.approx(-8.3552, abs=1e-4)  # the paper's line
    for point in front[1:-1]:
        g1, g2 = grad_at(tuple(point), 0), grad_at(tuple(point), 1)
        cos = g1 @ g2 / (np.linalg.norm(g1) * np.linalg.norm(g2))
        assert cos == pytest.approx(-1.0, abs=1e-9)
    assert np.abs(grad_at(AVERAGE_MINIMUM, None)).max() < 1e-9
    with pytest.raises(ValueError, match="-7, 7"):
        pareto_x2(8.0)


@pytest.mark.parametrize("start", [CAGRAD_STARTS[0], (0.0, 0.0)])
def test_vanilla_trajectory_decreases_the_average_and_is_deterministic(start: tuple[float, float]) -> None:
    rng_before = torch.get_rng_state()
    path = run_trajectory("vanilla", start, steps=500, lr=1e-3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert path.shape == (501, 2) and path.dtype == np.float64
    assert tuple(path[0]) == start
    average = sum(losses(torch.from_numpy(path)))
    assert float(average[-1]) < float(average[0]) - 0.1
    if start == CAGRAD_STARTS[0]:
        np.testing.assert_array_equal(run_trajectory("vanilla", start, steps=500, lr=1e-3), path)


def test_methods_needing_a_representation_are_refused() -> None:
    with pytest.raises(ValueError, match="'rlar' needs a shared representation; the toy problem has none"):
        run_trajectory("rlar", (0.0, 0.0), steps=10, lr=1e-3)
    with (
        pytest.raises(ValueError, match="none of the methods"),
        pytest.warns(UserWarning, match="skipped rlar"),
    ):
        plot_toy(["rlar"], Path("unused.png"), steps=10, lr=1e-3)


@pytest.mark.parametrize("method", list_methods())
def test_every_method_runs_or_is_refused_clearly(method: str) -> None:
    reason = skip_reason(method)
    if reason is not None:
        with pytest.raises(ValueError, match="needs a shared representation"):
            run_trajectory(method, (0.0, 0.0), steps=3, lr=1e-3)
        return
    try:
        path = run_trajectory(method, CAGRAD_STARTS[0], steps=30, lr=1e-3)
    except ValueError as exc:  # a method may refuse the problem, but must say why
        assert method in str(exc) or len(str(exc)) > 30, f"unclear refusal: {exc}"
        return
    assert path.shape == (31, 2) and np.isfinite(path).all()
    assert not np.array_equal(path[-1], path[0]), f"{method} did not move x"


def test_toy_is_a_plotting_tool_not_a_task() -> None:
    assert "toy" not in TASKS.names()
    assert ToyParams().starts == NASH_MTL_STARTS and (ToyParams().steps, ToyParams().lr) == (100_000, 1e-3)
    for bad, match in [({"steps": 0}, "--steps"), ({"lr": -1.0}, "--lr"), ({"starts": ()}, "--starts")]:
        with pytest.raises(ValueError, match=match):
            ToyParams(**bad)  # type: ignore[arg-type]


def test_plot_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--steps"):
        plot_toy(["vanilla"], tmp_path / "t.png", steps=0, lr=1e-3)
    assert not (tmp_path / "t.png").exists()


def test_plot_writes_a_png(tmp_path: Path) -> None:
    messages: list[str] = []
    out = plot_toy(
        ["vanilla", "rlar"],
        tmp_path / "t.png",
        steps=200,
        lr=1e-3,
        starts=CAGRAD_STARTS,
        report=messages.append,
    )
    assert out == tmp_path / "t.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert any("skipped rlar" in m for m in messages)
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]  # no temporary file left behind


def test_a_failing_method_costs_only_its_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(MultiTaskMethod):
        """Raises in backward."""

        def backward(self, inputs: StepInputs) -> dict[str, float]:
            raise RuntimeError("boom")

    monkeypatch.setitem(METHODS._entries, "broken_toy", Entry("broken_toy", Broken, "Raises.", "tests"))
    messages: list[str] = []
    out = plot_toy(
        ["broken_toy", "vanilla"],
        tmp_path / "b.png",
        steps=5,
        lr=1e-3,
        starts=[(0.0, 0.0)],
        report=messages.append,
    )
    assert out.stat().st_size > 0
    assert any("broken_toy failed: RuntimeError: boom" in m for m in messages)
    assert any(m.startswith("vanilla: 1 paths of 5 steps") for m in messages)
