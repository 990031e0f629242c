"""Cost of one training step per method, measured side by side in one process.

For each backbone, every method's step (forward, the method's backward, optimizer step) is timed
in interleaved rounds after a warm-up, so slow drifts of a noisy machine hit all methods alike.
Reports the median and inter-quartile range per method, the ratio to ``vanilla`` of the same
round, and peak memory (CUDA: ``max_memory_allocated``; CPU: not measured per method). The JSON
written to ``--out`` records the machine, versions and commit; compare only runs of one machine.

    python benchmarks/step_cost.py --backbones unet_small --size 64 --batch 16
    python benchmarks/step_cost.py --backbones nnunet_plain --size 512 --batch 8 --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mtlbench import atomic
from mtlbench.api.method import StepInputs
from mtlbench.environment import device_info, git_commit, versions
from mtlbench.model import MultiTaskModel
from mtlbench.precision import Precision
from mtlbench.registry import METHODS, create_backbone, create_task, list_methods
from mtlbench.tasks.thyroid.settings import ThyroidData
from mtlbench.tasks.thyroid.task import ThyroidParams


def synthetic_batch(batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    data = {
        "image": torch.randn(batch, 1, size, size, generator=g),
        "mask": mask,
        "label": torch.randint(0, 5, (batch,), generator=g),
        "clinical": torch.randn(batch, 13, generator=g),
    }
    return {k: v.to(device) for k, v in data.items()}


class StepRunner:
    def __init__(
        self, method: str, backbone: str, size: int, batch: int, device: torch.device, amp: str
    ) -> None:
        torch.manual_seed(0)
        self.task = create_task("thyroid", ThyroidParams(), ThyroidData(image_size=size), 0, Path("."))
        bb = create_backbone(backbone)
        self.model = MultiTaskModel(bb, self.task.build_heads(bb.contract)).to(device)
        params = METHODS.get(method).obj.Params()
        self.method = METHODS.create(method, self.task.task_names, params).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.precision = Precision.create(device, amp)
        self.batch = synthetic_batch(batch, size, device)
        self.device = device

    def step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = self.model(self.batch["image"])
            losses = self.task.compute_losses(out, self.batch)
        self.method.backward(
            StepInputs(
                losses,
                self.task.loss_weights(),
                self.model.shared_parameters(),
                out.representations,
                0,
                self.precision.scale,
                head_parameters=self.model.head_parameters(),
                loss_scale=self.precision.loss_scale,
            )
        )
        self.precision.step(self.optimizer)
        if self.method.needs.extra_forward:  # FAMO's re-evaluation is part of its cost
            self.method.after_step(self._losses_without_grad)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    @torch.no_grad()
    def _losses_without_grad(self) -> dict[str, torch.Tensor]:
        with self.precision.autocast():
            return self.task.compute_losses(self.model(self.batch["image"]), self.batch)

    def peak_memory_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step()
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def measure(
    backbone: str,
    methods: list[str],
    size: int,
    batch: int,
    device: torch.device,
    amp: str,
    warmup: int,
    rounds: int,
) -> list[dict[str, Any]]:
    runners = {m: StepRunner(m, backbone, size, batch, device, amp) for m in methods}
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m, runner in runners.items():
            times[m].append(runner.step())
    rows = []
    base = times.get("vanilla")
    for m in methods:
        t = times[m]
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        ratio = statistics.median([a / b for a, b in zip(t, base)]) if base else None
        rows.append(
            {
                "backbone": backbone,
                "method": m,
                "median_s": statistics.median(t),
                "iqr_s": q[2] - q[0],
                "ratio_to_vanilla": ratio,
                "peak_memory_mb": runners[m].peak_memory_mb(),
                "rounds": rounds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["unet_small"])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_cost.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    methods = args.methods or list_methods()
    if "vanilla" in methods:
        methods = ["vanilla"] + [m for m in methods if m != "vanilla"]
    rows = []
    for backbone in args.backbones:
        rows += measure(backbone, methods, args.size, args.batch, device, args.amp, args.warmup, args.rounds)
    report = {
        "benchmark": "step_cost",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "device": device_info(device),
        "versions": versions(),
        "git_commit": git_commit(),
        "rows": rows,
    }
    atomic.write_json(args.out, report)
    print(f"device: {report['device']['name']}  ({device.type}, {torch.get_num_threads()} threads)")
    print(f"{'backbone':<16}{'method':<10}{'median ms':>10}{'IQR ms':>9}{'× vanilla':>11}{'peak MiB':>10}")
    for r in rows:
        ratio = "" if r["ratio_to_vanilla"] is None else f"{r['ratio_to_vanilla']:.2f}"
        mem = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        print(
            f"{r['backbone']:<16}{r['method']:<10}{1000 * r['median_s']:>10.1f}{1000 * r['iqr_s']:>9.1f}"
            f"{ratio:>11}{mem:>10}"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
