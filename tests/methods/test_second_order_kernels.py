"""RLAR and Rep-MTL with the heads' own second-order kernels equal the straightforward version.

The model's convolutions and instance norms are :mod:`mtlbench.conv` and
:mod:`mtlbench.instance_norm` modules, whose double backward is written out (the fast, exact
implementation ``--method rlar`` runs). Turned back into PyTorch's own classes (the same
parameters), the step is the straightforward reverse-over-reverse one: the penalty and every
parameter's gradient must agree to float32 rounding (1e-6 of the largest gradient entry).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlbench.activation import LeakyReLU
from mtlbench.bench.harness import build_harness
from mtlbench.config import resolve_config
from mtlbench.conv import Conv2d, ConvTranspose2d
from mtlbench.instance_norm import InstanceNorm2d

PYTORCH_CLASS = {
    Conv2d: nn.Conv2d,
    ConvTranspose2d: nn.ConvTranspose2d,
    InstanceNorm2d: nn.InstanceNorm2d,
    LeakyReLU: nn.LeakyReLU,
}


def step_gradients(
    method: str, tmp_path, straightforward: bool
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
        "train.lr=0.0",
        "backbone_args.n_stages=3",
        "backbone_args.features_per_stage=[4,8,16]",
        "method_args.lambda_adv=1.0" if method == "rlar" else "method_args.lambda_tsr=0.5",
    ]
    config = resolve_config(overrides, task="thyroid", method=method, backbone="nnunet_plain", preset="smoke")
    torch.manual_seed(0)
    h = build_harness(config)
    swapped = 0
    if straightforward:
        for module in h.trainer.model.modules():
            if type(module) in PYTORCH_CLASS:
                module.__class__ = PYTORCH_CLASS[type(module)]
                swapped += 1
        assert swapped > 10  # encoder and decoder convolutions and norms
    logs = h.trainer.train_step(h.batch)
    assert logs is not None
    grads = {n: p.grad.detach().clone() for n, p in h.trainer.model.named_parameters() if p.grad is not None}
    return logs, grads


@pytest.mark.parametrize("method", ["rlar", "rep_mtl"])
def test_fast_kernels_equal_the_straightforward_step(method: str, tmp_path) -> None:
    fast_logs, fast = step_gradients(method, tmp_path, straightforward=False)
    ref_logs, ref = step_gradients(method, tmp_path, straightforward=True)
    penalties = ["rlar_penalty"] if method == "rlar" else ["rep_mtl/tsr", "rep_mtl/csa"]
    for key in ("loss", *penalties):
        assert fast_logs[key] == pytest.approx(ref_logs[key], rel=1e-6), key
    assert all(ref_logs[key] > 1e-3 for key in penalties)  # a penalty that is there
    assert fast.keys() == ref.keys()
    scale = max(float(g.abs().max()) for g in ref.values())
    # A conv bias before a per-sample norm has a true gradient of 0 (the norm removes it): both
    # sides are then the rounding of a sum over every pixel, measured up to 1.2e-6 of the scale
    # (single-threaded oneDNN, AMD EPYC), of either sign. Those are checked to be zero to 1e-5.
    zero = 1e-5 * scale
    for name, g in ref.items():
        if float(g.abs().max()) < zero:
            assert float(fast[name].abs().max()) < zero, name
            continue
        torch.testing.assert_close(fast[name], g, rtol=1e-5, atol=1e-6 * scale, msg=name)


def graph_node_names(tensor: torch.Tensor) -> set[str]:
    names: set[str] = set()
    seen: set[int] = set()
    stack = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(node.name())
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize(
    ("method", "args", "heads", "backbone"),
    [
        ("rlar", [], True, False),
        ("rlar", ["method_args.representation=mid"], True, True),
        ("rlar", ["method_args.every=2"], False, False),  # step 1 of every=2: no penalty
        ("rep_mtl", [], True, False),
        ("vanilla", [], False, False),
        ("pcgrad", [], False, False),
    ],
)
def test_the_trainer_uses_them_only_where_a_step_differentiates_twice(
    method: str, args: list[str], heads: bool, backbone: bool, tmp_path
) -> None:
    """Their autograd Functions cost Python time per layer: first-order methods and RLAR's off-steps
    run PyTorch's own layers (evaluation too), the backbone too when only the bottleneck is probed
    (MultiTaskMethod.second_order_layers, mtlbench.second_order)."""
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
        *args,
    ]
    h = build_harness(resolve_config(overrides, task="thyroid", method=method, preset="smoke"))
    trainer = h.trainer
    trainer.state.global_step = 1
    output, _ = trainer.forward_losses(h.batch)
    in_backbone = graph_node_names(output.features[0])
    in_model = graph_node_names(output.outputs["seg"])
    assert ("_ConvolutionBackward" in in_backbone) is backbone
    assert ("_InstanceNormBackward" in in_backbone) is backbone
    assert ("_ConvolutionBackward" in in_model) is heads
    assert ("ConvolutionBackward0" in in_model) is not (heads and backbone)


@pytest.mark.parametrize("threshold", [0, 10**9])
def test_a_small_subset_runs_pytorchs_layers(threshold: int, tmp_path, monkeypatch) -> None:
    """RLAR's ``subset``: the kernels run the subset's heads only from MIN_SUBSET_PIXELS on."""
    from mtlbench import second_order

    monkeypatch.setattr(second_order, "MIN_SUBSET_PIXELS", threshold)
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
        "method_args.subset=2",
    ]
    h = build_harness(resolve_config(overrides, task="thyroid", method="rlar", preset="smoke"))
    trainer = h.trainer
    subset = trainer.method.subset_for_step(0, len(h.batch["image"]))
    _, _, split = trainer._forward(h.batch, subset)
    assert split is not None
    names = graph_node_names(split.losses["seg"])
    assert ("_ConvolutionBackward" in names) is (threshold == 0)
    assert ("_InstanceNormBackward" in names) is (threshold == 0)
