"""Our PCGrad, CAGrad and MGDA steps against LibMTL 1.1.5's and torchjd 0.18's, on one model and batch.

One step is: ``zero_grad``, the forward pass of the thyroid model (``unet_small`` encoder, heads for
segmentation, TI-RADS grade and the clinically guided radiomics slice: three tasks), the per-task
gradients, the combination, and every parameter's ``.grad`` filled. No optimizer step (the same for
all). The implementations share one model and one seeded batch and run interleaved in rounds (the
order rotating every round), so a slow drift of a shared machine hits all alike; each row reports the
median and inter-quartile range over the rounds and the median over rounds of its time divided by
ours in the same round.

* **ours**: ``PCGrad``/``CAGrad``/``MGDA``'s ``backward`` with the trainer's :class:`StepInputs`.
* **libmtl**: LibMTL's weighting class (``LibMTL.weighting.<Name>``, imported through
  ``mtlbench.libmtl_compat``) given the model attributes it reads by
  :func:`~mtlbench.methods.libmtl_adapter.make_bridge`, its ``backward(stacked losses, **kwargs)``
  called as LibMTL's trainer calls it: one ``loss.backward`` per task through the whole model.
* **torchjd**: ``mtl_backward(losses, features, shared_params=encoder)`` then
  ``jac_to_grad(encoder, aggregator)``, the documented 0.18 usage. The heads read the encoder's levels
  through identity views, which are the ``features``: ``mtl_backward`` needs features that are not
  functions of one another, and a U-Net's skip levels are (stage i+1 is computed from level i); given
  the levels themselves it counts the deeper levels' gradient twice in the shallower stages (or, with
  ``retain_graph=False``, fails). The views make each feature's gradient the heads' part only.
  ``retain_graph=True``, because two tasks (grade, radiomics slice) share the classifier head's graph.

Conventions, chosen so that all three compute the same update (ours defaults differ, at the same cost):
CAGrad with c = α = 0.5, no rescaling, the mean-based update (ours: ``alpha=0.5, rescale=0,
scale_by_tasks=False``; LibMTL: ``calpha=0.5, rescale=0``; torchjd: ``CAGrad(c=0.5)``); MGDA without
gradient normalisation (LibMTL ``mgda_gn="none"``) and heads trained on Σ L_t (ours
``heads="unweighted"``; LibMTL and torchjd always do); PCGrad sums the projected gradients (all three).
Every head receives the gradient of Σ L_t in all three.

Agreement: after the warm-up each implementation's ``.grad`` is compared with ours on the same batch,
as ‖Δ‖/‖ours‖ over the shared (encoder) and over the head parameters. PCGrad draws a random projection
order per task (ours from a seeded generator, LibMTL from ``random``, torchjd from torch's global
generator), so its shared gradient is compared with the nearest of the results of every combination
of orders, computed from the task-gradient matrix (LibMTL's loop also visits the task itself; both
rules are enumerated). The tolerances (:data:`TOLERANCES`) are the solvers' own accuracy: PCGrad is
exact up to float32 rounding; LibMTL's CAGrad (SLSQP, ``ftol`` 1e-6 on the objective), its MGDA and
torchjd's MGDA (Frank–Wolfe stopped on the step size: 1e-5 for LibMTL's official-code solver, γ < 1e-3
for torchjd) and torchjd's CAGrad (Clarabel) are approximate.

The JSON written to ``--out`` records the machine, load average, versions, commit and device; compare
only runs of one machine.

    python benchmarks/library_comparison.py
    python benchmarks/library_comparison.py --rounds 20 --size 128 --batch 8
    python benchmarks/library_comparison.py --size 32 --batch 4 --widths 8 16 32 64 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from thyroid_model import QUICK_WIDTHS, ThyroidStep, build_thyroid_step
from torch import Tensor

from mtlbench import atomic
from mtlbench.api.gradients import GradientCombination, gram_matrix, task_gradient_matrix
from mtlbench.environment import device_info, versions
from mtlbench.methods.cagrad import CAGrad, CAGradParams
from mtlbench.methods.mgda import MGDA, MGDAParams
from mtlbench.methods.pcgrad import PCGrad, PCGradParams
from mtlbench.model import ModelOutput

METHODS = ("pcgrad", "cagrad", "mgda")
LIBRARIES = ("libmtl", "torchjd")
IMPLEMENTATIONS = ("ours", *LIBRARIES)
CAGRAD_C = 0.5

#: Largest accepted ‖Δ‖/‖ours‖ per (method, implementation), for the shared and the head parameters.
TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    ("pcgrad", "ours"): (1e-5, 1e-5),
    ("pcgrad", "libmtl"): (1e-5, 1e-5),
    ("pcgrad", "torchjd"): (1e-5, 1e-5),
    ("cagrad", "libmtl"): (1e-3, 1e-5),
    ("cagrad", "torchjd"): (1e-3, 1e-5),
    ("mgda", "libmtl"): (1e-3, 1e-5),
    ("mgda", "torchjd"): (2e-2, 1e-5),
}

LIBMTL_WEIGHTINGS = {"pcgrad": ("PCGrad", {}), "cagrad": ("CAGrad", {"calpha": CAGRAD_C, "rescale": 0})}
LIBMTL_WEIGHTINGS["mgda"] = ("MGDA", {"mgda_gn": "none"})

#: Packages whose versions the result records besides mtlbench's own dependencies.
REFERENCE_PACKAGES = ("LibMTL", "torchjd", "cvxpy", "clarabel", "scipy", "numpy")

StepFunction = Callable[[], None]


@dataclass(frozen=True)
class ComparisonSettings:
    """What :func:`compare` measures: methods, libraries, model size, rounds, threads."""

    methods: tuple[str, ...] = METHODS
    libraries: tuple[str, ...] = LIBRARIES
    size: int = 64
    batch: int = 16
    widths: tuple[int, ...] = QUICK_WIDTHS
    embedding_dim: int = 64
    classifier_hidden: int = 128
    rounds: int = 10
    warmup: int = 2
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name, values, known in (
            ("methods", self.methods, METHODS),
            ("libraries", self.libraries, LIBRARIES),
        ):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(
                    f"Parameter `{name}` should be a non-empty subset of {', '.join(known)}. "
                    f"Found `{name} = {list(values)}`."
                )
        for name in ("size", "batch", "rounds", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"Parameter `{name}` should be >= 1. Found `{name} = {getattr(self, name)}`."
                )
        if self.warmup < 0:
            raise ValueError(f"Parameter `warmup` should be >= 0. Found `warmup = {self.warmup}`.")


# ---------------------------------------------------------------------------------------- implementations
def ours_method(name: str, task_names: Sequence[str]) -> GradientCombination:
    """Our method, configured to the libraries' shared convention (see the module docstring)."""
    if name == "pcgrad":
        return PCGrad(task_names, PCGradParams(seed=0))
    if name == "cagrad":
        return CAGrad(task_names, CAGradParams(alpha=CAGRAD_C, rescale=0, scale_by_tasks=False))
    return MGDA(task_names, MGDAParams(normalization="none", heads="unweighted"))


def ours_step(step: ThyroidStep, name: str) -> StepFunction:
    method = ours_method(name, step.task_names)

    def run() -> None:
        step.zero_grad()
        output, losses = step.forward()
        method.backward(step.step_inputs(output, losses))

    return run


def libmtl_step(step: ThyroidStep, name: str) -> StepFunction:
    from mtlbench.libmtl_compat import import_libmtl
    from mtlbench.methods.libmtl_adapter import make_bridge

    class_name, kwargs = LIBMTL_WEIGHTINGS[name]
    bridge = make_bridge(getattr(import_libmtl("weighting"), class_name), list(step.task_names))
    bridge.shared = step.model.shared_parameters()
    weights = step.task.loss_weights()

    def run() -> None:
        step.zero_grad()
        _, losses = step.forward()
        result = bridge.backward(torch.stack([weights[t] * losses[t] for t in step.task_names]), **kwargs)
        if result is None:
            raise RuntimeError(f"LibMTL's {class_name} returned no weights (its solver did not converge)")

    return run


def torchjd_step(step: ThyroidStep, name: str) -> StepFunction:
    from torchjd.aggregation import MGDA as JDMGDA
    from torchjd.aggregation import CAGrad as JDCAGrad
    from torchjd.aggregation import PCGrad as JDPCGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregator = {"pcgrad": JDPCGrad, "cagrad": lambda: JDCAGrad(c=CAGRAD_C), "mgda": JDMGDA}[name]()
    shared = step.model.shared_parameters()
    weights = step.task.loss_weights()

    def run() -> None:
        step.zero_grad()
        levels = step.model.backbone(step.batch["image"])
        features = [level.view_as(level) for level in levels]  # leaves of the heads' graph only
        outputs = {head_name: head(features) for head_name, head in step.model.heads.items()}
        losses = step.task.compute_losses(ModelOutput(features, outputs), step.batch)
        objectives = [weights[t] * losses[t] for t in step.task_names]
        # cls and clin share the classifier head's graph: the first task's pass must not free it
        mtl_backward(objectives, features=features, shared_params=shared, retain_graph=True)
        jac_to_grad(shared, aggregator)

    return run


BUILDERS: dict[str, Callable[[ThyroidStep, str], StepFunction]] = {
    "ours": ours_step,
    "libmtl": libmtl_step,
    "torchjd": torchjd_step,
}


# ---------------------------------------------------------------------------------------- agreement
def pcgrad_order_results(gram: Tensor, project_on_self: bool) -> list[Tensor]:
    """PCGrad's weights (d = wᵀG) for every combination of per-task projection orders.

    Each task i visits the tasks in one of the T! orders; with ``project_on_self`` (LibMTL's loop) it
    may also be projected on its own original gradient when their inner product has turned negative.
    """
    m = gram.to(torch.float64)
    t = m.shape[0]
    per_task: list[list[Tensor]] = []
    for i in range(t):
        options: dict[tuple[float, ...], Tensor] = {}
        for order in itertools.permutations(range(t)):
            coef = torch.zeros(t, dtype=torch.float64)
            coef[i] = 1.0
            for j in order:
                if j == i and not project_on_self:
                    continue
                inner = float(coef @ m[:, j])
                if inner < 0 and m[j, j] > 0:
                    coef[j] -= inner / float(m[j, j])
            options[tuple(round(float(c), 12) for c in coef)] = coef
        per_task.append(list(options.values()))
    return [torch.stack(choice).sum(dim=0) for choice in itertools.product(*per_task)]


def flat(grads: dict[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([grads[n].reshape(-1).double() for n in names])


def relative_error(got: Tensor, expected: Tensor) -> float:
    norm = float(expected.norm())
    return float((got - expected).norm()) / norm if norm > 0 else float((got - expected).norm())


def parameter_names(step: ThyroidStep) -> tuple[list[str], list[str]]:
    shared = {id(p) for p in step.model.shared_parameters()}
    named = list(step.model.named_parameters())
    return [n for n, p in named if id(p) in shared], [n for n, p in named if id(p) not in shared]


def task_gradients(step: ThyroidStep) -> Tensor:
    """The T × P matrix of λ_t ∇L_t over the shared parameters, for the PCGrad order enumeration."""
    step.zero_grad()
    _, losses = step.forward()
    weights = step.task.loss_weights()
    return task_gradient_matrix(
        [weights[t] * losses[t] for t in step.task_names], step.model.shared_parameters()
    )


def agreement_rows(
    step: ThyroidStep, method: str, results: dict[str, dict[str, Tensor]]
) -> list[dict[str, Any]]:
    """‖Δ‖/‖ours‖ of each implementation's ``.grad`` (shared, heads), with the tolerance and verdict."""
    shared_names, head_names = parameter_names(step)
    ours = results["ours"]
    candidates: dict[bool, list[Tensor]] = {}
    if method == "pcgrad":
        grads = task_gradients(step).double()
        gram = gram_matrix(grads)
        for rule in (False, True):
            candidates[rule] = [w @ grads for w in pcgrad_order_results(gram, project_on_self=rule)]
    rows = []
    for impl, got in results.items():
        if impl == "ours" and method != "pcgrad":
            continue
        shared = flat(got, shared_names)
        if method == "pcgrad":
            pool = candidates[impl == "libmtl"]
            shared_error = min(relative_error(shared, d) for d in pool)
        else:
            shared_error = relative_error(shared, flat(ours, shared_names))
        heads_error = relative_error(flat(got, head_names), flat(ours, head_names))
        shared_tol, heads_tol = TOLERANCES[(method, impl)]
        rows.append(
            {
                "method": method,
                "implementation": impl,
                "reference": "nearest projection order" if method == "pcgrad" else "ours",
                "shared_rel_error": shared_error,
                "heads_rel_error": heads_error,
                "shared_tolerance": shared_tol,
                "heads_tolerance": heads_tol,
                "agree": shared_error <= shared_tol and heads_error <= heads_tol,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- timing
def timed(run: StepFunction) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def timing_rows(
    times: dict[tuple[str, str], list[float]], errors: dict[tuple[str, str], str]
) -> list[dict[str, Any]]:
    rows = []
    for (method, impl), values in times.items():
        base = times.get((method, "ours"), [])
        ratios = [v / b for v, b in zip(values, base)] if impl != "ours" and base else []
        rows.append(
            {
                "method": method,
                "implementation": impl,
                "median_s": statistics.median(values) if values else None,
                "iqr_s": iqr(values) if values else None,
                "ratio_to_ours": statistics.median(ratios) if ratios else (1.0 if impl == "ours" else None),
                "ratio_iqr": iqr(ratios) if ratios else None,
                "times_s": values,
                "error": errors.get((method, impl)),
            }
        )
    return rows


def full_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def reference_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in REFERENCE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def compare(settings: ComparisonSettings) -> dict[str, Any]:
    """Time and cross-check every (method, implementation) of ``settings``; the JSON-ready report."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    load_before = list(os.getloadavg())
    try:
        step = build_thyroid_step(
            settings.size,
            settings.batch,
            settings.widths,
            settings.embedding_dim,
            settings.classifier_hidden,
            settings.seed,
        )
        impls = ("ours", *settings.libraries)
        runs: dict[tuple[str, str], StepFunction] = {}
        errors: dict[tuple[str, str], str] = {}
        agreement: list[dict[str, Any]] = []
        for method in settings.methods:
            results: dict[str, dict[str, Tensor]] = {}
            for impl in impls:
                try:
                    run = BUILDERS[impl](step, method)
                    for _ in range(settings.warmup):
                        run()
                    run()
                except Exception as exc:  # a failing library is a result row, not a crash
                    errors[(method, impl)] = f"{type(exc).__name__}: {exc}"
                    continue
                runs[(method, impl)] = run
                results[impl] = step.gradients()
            if "ours" in results:
                agreement += agreement_rows(step, method, results)
        times: dict[tuple[str, str], list[float]] = {(m, i): [] for m in settings.methods for i in impls}
        for r in range(settings.rounds):
            for method in settings.methods:
                order = impls[r % len(impls) :] + impls[: r % len(impls)]
                for impl in order:
                    if (method, impl) in runs:
                        times[(method, impl)].append(timed(runs[(method, impl)]))
        shared = sum(p.numel() for p in step.model.shared_parameters())
        heads = sum(p.numel() for p in step.model.head_parameters())
        task_names = list(step.task_names)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "benchmark": "library_comparison",
        "settings": asdict(settings),
        "model": {
            "task": "thyroid",
            "backbone": "unet_small",
            "tasks": task_names,
            "shared_parameters": shared,
            "head_parameters": heads,
        },
        "device": {**device_info(torch.device("cpu")), "threads": settings.threads},
        "load_average": {"before": load_before, "after": list(os.getloadavg())},
        "versions": {**versions(), **reference_versions()},
        "git_commit": full_commit(),
        "rows": timing_rows(times, errors),
        "agreement": agreement,
    }


# ---------------------------------------------------------------------------------------- command line
def print_report(report: dict[str, Any]) -> None:
    d = report["device"]
    print(f"device: {d['name']} ({d['threads']} threads), load average {report['load_average']}")
    print(f"{'method':<8}{'implementation':<16}{'median ms':>10}{'IQR ms':>9}{'× ours':>8}{'IQR':>7}")
    for r in report["rows"]:
        if r["median_s"] is None:
            print(f"{r['method']:<8}{r['implementation']:<16}  failed: {r['error']}")
            continue
        ratio = "" if r["ratio_to_ours"] is None else f"{r['ratio_to_ours']:.2f}"
        spread = "" if r["ratio_iqr"] is None else f"{r['ratio_iqr']:.2f}"
        print(
            f"{r['method']:<8}{r['implementation']:<16}{1000 * r['median_s']:>10.1f}"
            f"{1000 * r['iqr_s']:>9.1f}{ratio:>8}{spread:>7}"
        )
    print(f"{'method':<8}{'implementation':<16}{'shared ‖Δ‖/‖·‖':>16}{'heads':>10}  agree (tolerance)")
    for a in report["agreement"]:
        print(
            f"{a['method']:<8}{a['implementation']:<16}{a['shared_rel_error']:>16.1e}{a['heads_rel_error']:>10.1e}"
            f"  {'yes' if a['agree'] else 'NO'} ({a['shared_tolerance']:g}, {a['heads_tolerance']:g})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    defaults = ComparisonSettings()
    parser.add_argument("--methods", nargs="+", default=list(defaults.methods), choices=METHODS)
    parser.add_argument("--libraries", nargs="+", default=list(defaults.libraries), choices=LIBRARIES)
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in px")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--widths", type=int, nargs="+", default=list(defaults.widths), help="encoder widths")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    parser.add_argument("--classifier-hidden", type=int, default=defaults.classifier_hidden)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/library_comparison.json"))
    args = parser.parse_args()
    settings = ComparisonSettings(
        methods=tuple(args.methods),
        libraries=tuple(args.libraries),
        size=args.size,
        batch=args.batch,
        widths=tuple(args.widths),
        embedding_dim=args.embedding_dim,
        classifier_hidden=args.classifier_hidden,
        rounds=args.rounds,
        warmup=args.warmup,
        threads=args.threads,
    )
    report = compare(settings)
    atomic.write_json(args.out, report)
    print_report(report)
    print(f"written: {args.out}")
    if not all(a["agree"] for a in report["agreement"]) or any(r["error"] for r in report["rows"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
