"""Trajectory plot of multitask methods on the two-objective toy problem (CAGrad, Fig. 1).

One panel per method: filled contours of the objective's average ((f1_scale·f₁ + f₂)/2), the Pareto
set as a thick grey curve, the minima of f₁ and f₂ as stars, and each start point's path with a
black circle at the start and a coloured star at the end. matplotlib is imported inside
:func:`plot_toy` (object-oriented API with the Agg canvas, no pyplot state), so importing this module
stays cheap.
"""

from __future__ import annotations

import io
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mtlbench.atomic import write_bytes
from mtlbench.toy.problem import (
    F1_MINIMUM,
    F2_MINIMUM,
    NASH_MTL_STARTS,
    X_RANGE,
    ToyParams,
    losses,
    pareto_set,
)
from mtlbench.toy.trajectories import run_trajectory, skip_reason

#: Colours of the start points' paths, in order (cycled).
PATH_COLOURS = ("#d62728", "#ff7f0e", "#e377c2", "#17becf", "#8c564b", "#bcbd22", "#1f77b4")


def average_loss_grid(n: int = 241, f1_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X1, X2, (f1_scale·f1 + f2)/2)`` on an n×n grid over :data:`X_RANGE` (float64)."""
    import torch

    axis = np.linspace(X_RANGE[0], X_RANGE[1], n)
    grid_x1, grid_x2 = np.meshgrid(axis, axis)
    points = torch.from_numpy(np.stack([grid_x1, grid_x2], axis=-1))
    with torch.no_grad():
        f1, f2 = losses(points, f1_scale)
    return grid_x1, grid_x2, (0.5 * (f1 + f2)).numpy()


def plot_toy(
    methods: Sequence[str],
    out: Path,
    steps: int,
    lr: float,
    starts: Sequence[tuple[float, float]] = NASH_MTL_STARTS,
    *,
    f1_scale: float = 1.0,
    seed: int = 0,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Run every method from every start and save the panels as a PNG at ``out`` (atomically).

    Methods that need a shared representation (RLAR, Rep-MTL, MGDA-UB) or refuse the problem with
    a ``ValueError`` are skipped: ``report`` receives one line per skipped method (without
    ``report`` it is a ``UserWarning``), and so does a path that stopped being finite (its panel's
    title says so) or a method that raised anything else (its panel shows the error); ``report``
    also gets each method's run time. Raises ``ValueError`` when no
    method can run and ``UnknownNameError`` for an unregistered name. Returns ``out``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    def say(message: str, warn: bool = False) -> None:
        if report is not None:
            report(message)
        elif warn:
            warnings.warn(message, stacklevel=3)

    out = Path(out)
    starts = [(float(a), float(b)) for a, b in starts]
    ToyParams(steps=steps, lr=lr, starts=tuple(starts), f1_scale=f1_scale)  # ValueError naming the option
    runnable = []
    for name in dict.fromkeys(methods):  # unique, in the given order
        reason = skip_reason(name)
        if reason is None:
            runnable.append(name)
        else:
            say(f"skipped {name}: {reason}", warn=True)

    paths: dict[str, list[np.ndarray | str]] = {}
    for name in runnable:
        began = time.perf_counter()
        method_paths: list[np.ndarray | str] = []
        try:
            for start in starts:
                try:
                    method_paths.append(run_trajectory(name, start, steps, lr, f1_scale=f1_scale, seed=seed))
                except FloatingPointError as exc:
                    say(str(exc), warn=True)
                    method_paths.append(str(exc))
        except ValueError as exc:  # the method refuses the problem (e.g. GradNorm wants a weight matrix)
            say(f"skipped {name}: {exc}", warn=True)
            continue
        except Exception as exc:  # a broken method costs its panel, not the other methods' runs
            failure = f"{name} failed: {type(exc).__name__}: {exc}"
            say(failure, warn=True)
            paths[name] = [failure] * len(starts)
            continue
        paths[name] = method_paths
        say(f"{name}: {len(starts)} paths of {steps} steps in {time.perf_counter() - began:.1f} s")
    runnable = list(paths)
    if not runnable:
        raise ValueError(f"none of the methods {list(methods)} can run on the toy problem")

    grid_x1, grid_x2, average = average_loss_grid(f1_scale=f1_scale)
    front = pareto_set()
    cols = min(len(runnable), 4)
    rows = -(-len(runnable) // cols)
    width = 4.2 * cols + 1.2  # panels and the colour bar
    fig = Figure(figsize=(width, 4.4 * rows + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    levels = np.linspace(float(average.min()), float(average.max()), 25)
    for ax in axes.flat[len(runnable) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, runnable):
        filled = ax.contourf(grid_x1, grid_x2, average, levels=levels, cmap="viridis", alpha=0.55)
        ax.contour(grid_x1, grid_x2, average, levels=levels, colors="k", linewidths=0.3, alpha=0.35)
        ax.plot(front[:, 0], front[:, 1], color="0.35", linewidth=5, solid_capstyle="round", zorder=2)
        for point in (F1_MINIMUM, F2_MINIMUM):
            ax.plot(*point, marker="*", color="k", markersize=9, linestyle="none", zorder=3)
        failed = 0
        for k, (start, path) in enumerate(zip(starts, paths[name])):
            colour = PATH_COLOURS[k % len(PATH_COLOURS)]
            ax.plot(*start, marker="o", color="k", markersize=6, zorder=5)
            if isinstance(path, str):
                failed += 1
                continue
            ax.plot(path[:, 0], path[:, 1], color=colour, linewidth=1.8, zorder=4)
            ax.plot(*path[-1], marker="*", markersize=13, color=colour, markeredgecolor="k", zorder=6)
        if failed == len(starts) and "failed:" in str(paths[name][0]):
            ax.text(
                0.5,
                0.5,
                textwrap.fill(str(paths[name][0]), 40),
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="darkred",
                zorder=7,
            )
            ax.set_title(f"{name} (failed)")
        else:
            ax.set_title(name if not failed else f"{name} ({failed} path(s) diverged)")
        ax.set_xlim(*X_RANGE)
        ax.set_ylim(*X_RANGE)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    fig.colorbar(
        filled, ax=axes, shrink=0.8, label="(f1 + f2) / 2" if f1_scale == 1 else f"({f1_scale}·f1 + f2) / 2"
    )
    handles = [
        Line2D([], [], color=PATH_COLOURS[k % len(PATH_COLOURS)], linewidth=2, label=f"start ({a:g}, {b:g})")
        for k, (a, b) in enumerate(starts)
    ]
    handles += [
        Line2D([], [], color="0.35", linewidth=5, label="Pareto set"),
        Line2D([], [], color="k", marker="*", linestyle="none", label="minima of f1, f2"),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=max(2, min(len(handles), int(width / 2.4))),
        frameon=False,
    )
    fig.suptitle(f"Toy problem (Liu et al. 2021): Adam, lr={lr:g}, {steps} steps", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes(out, buffer.getvalue())
    return out
