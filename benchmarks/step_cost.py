"""The step cost of issue 12's two configurations, through ``mtlbench bench`` (the trainer's own step).

Configuration A: an nnU-Net plain encoder-decoder of 5 stages (16–256 channels: ``nnunet_plain``
and ``task_args.seg_decoder=nnunet``, nnU-Net's transposed-conv decoder) with the thyroid
classifier, 128 px, batch 8. ``A-bilinear``: the same encoder with the task's default decoder
(bilinear upsampling), the configuration measured as A before 2026-12-01. Configuration B: the
thyroid ``quick`` preset (``unet_small``, 64 px, batch 16). All on the thyroid phantom, 2 CPU
threads unless ``--threads`` says otherwise. The rows are the methods whose price the issue asks
for, RLAR's two cheaper modes included; the JSON and PNG land in ``benchmarks/results/`` with the
machine, versions and commit. As in ``mtlbench bench``, glibc keeps freed memory while the steps are
timed (:mod:`mtlbench.bench.allocator`), so that no step's time depends on what the steps before it
gave back to the system.

    python benchmarks/step_cost.py --config A
    python benchmarks/step_cost.py --config A-bilinear
    python benchmarks/step_cost.py --config B --rounds 20
    python benchmarks/step_cost.py --config A --device cuda --amp bf16 data.image_size=512   # a GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mtlbench import atomic
from mtlbench.bench.compare import method_configs, parse_methods, run_comparison
from mtlbench.bench.render import bench_plot, bench_tables

_NNUNET_A = [
    "backbone=nnunet_plain",
    "backbone_args.n_stages=5",
    "backbone_args.features_per_stage=[16,32,64,128,256]",
    "data.image_size=128",
    "train.batch_size=8",
]
CONFIGURATIONS: dict[str, list[str]] = {
    # nnU-Net's encoder and decoder (transposed-conv upsampling), as the paper's model
    "A": [*_NNUNET_A, "task_args.seg_decoder=nnunet"],
    # the same encoder with the thyroid task's default decoder (bilinear upsampling, wider first convs)
    "A-bilinear": [*_NNUNET_A, "task_args.seg_decoder=bilinear"],
    "B": ["train.batch_size=16"],
}
METHODS = "vanilla,rlar,rlar:every=4,rlar:subset=2,rep_mtl,pcgrad,cagrad,mgda"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGURATIONS), default="A")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--rounds", type=int, default=16, help="a multiple of 4 (rlar:every=4)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--breakdown-rounds", type=int, default=5)
    parser.add_argument("--memory", choices=("subprocess", "inline", "off"), default="subprocess")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="more settings key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [
        *CONFIGURATIONS[args.config],
        f"train.device={args.device}",
        f"train.amp={args.amp}",
        "train.progress=false",
        *args.overrides,
    ]
    configs = method_configs(parse_methods(args.methods), overrides, task="thyroid")
    record = run_comparison(
        configs,
        args.warmup,
        args.rounds,
        args.breakdown_rounds,
        args.memory,
        log=lambda m: print(m, flush=True),
    )
    record["configuration"] = {"name": args.config, "overrides": overrides}
    out = args.out or Path(__file__).parent / "results" / f"step_cost_{args.config}.json"
    atomic.write_json(out, record)
    bench_plot(record, out.with_suffix(".png"))
    from rich.console import Console

    console = Console()
    for table in bench_tables(record):
        console.print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
