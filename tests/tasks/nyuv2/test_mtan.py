"""MTAN's attention heads over the SegNet backbone: shapes, masks, the parameter count of the papers'
model, the shared convs, and one training step of every method."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtlbench.config import resolve_config
from mtlbench.errors import ConfigError
from mtlbench.model import MultiTaskModel
from mtlbench.registry import create_backbone, list_methods
from mtlbench.runner import prepare_run, run_experiment
from mtlbench.tasks.nyuv2.heads import SegNetHead
from mtlbench.tasks.nyuv2.layout import write_fixture
from mtlbench.tasks.nyuv2.mtan import MTANHead, mtan_heads

SMALL = (4, 8, 8, 16, 16)
NYU = {"seg": 13, "depth": 1, "normal": 3}


def _model(widths: tuple[int, ...], channels: dict[str, int]) -> MultiTaskModel:
    backbone = create_backbone("segnet", in_channels=3, widths=widths)
    return MultiTaskModel(backbone, mtan_heads(backbone.contract, channels))


def _count(params: object) -> int:
    return sum(p.numel() for p in params)  # type: ignore[attr-defined]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_outputs_and_attention_masks_at_a_small_size(train: bool) -> None:
    torch.manual_seed(0)
    model = _model(SMALL, NYU).train(train)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x).outputs
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "seg": (2, 13, 64, 96),
            "depth": (2, 1, 64, 96),
            "normal": (2, 3, 64, 96),
        }
        features = model.backbone(x)
        attended, masks = model.heads["depth"].attend(features)
    assert attended.shape == (2, 4, 64, 96)
    n = len(SMALL)
    expected = [(2, SMALL[j], 64 >> j, 96 >> j) for j in range(n)]  # encoder stages
    expected += [(2, SMALL[max(k - 1, 0)], 64 >> k, 96 >> k) for k in reversed(range(n))]  # decoder
    assert [tuple(m.shape) for m in masks] == expected
    for mask in masks:
        assert mask.min() > 0 and mask.max() < 1  # sigmoid masks, strictly inside (0, 1)
    assert len({id(m) for m in masks}) == 2 * n and not torch.equal(masks[0], masks[1][:, :4, :32, :48])


def test_parameter_count_of_the_papers_nyuv2_model() -> None:
    """MTAN's official ``model_segnet_mtan.py`` has 44,229,076 parameters, 3 of them UW's log-sigmas
    (counted with its own ``count_parameters``), and prints them relative to 24,981,069; CAGrad 2021
    Table 1 gives MTAN 1.77× a single-task SegNet."""
    model = _model((64, 128, 256, 512, 512), NYU)
    total = _count(model.parameters())
    assert total == 44_229_076 - 3
    heads = model.heads
    shared = heads["seg"].shared  # type: ignore[union-attr]
    assert all(heads[t].shared is shared for t in NYU)  # type: ignore[union-attr]
    per_task = [_count(p for n, p in heads[t].named_parameters() if not n.startswith("shared.")) for t in NYU]
    assert total == _count(model.backbone.parameters()) + _count(shared.parameters()) + sum(per_task)
    single = _count(model.backbone.parameters()) + _count(SegNetHead(model.contract, 13).parameters())
    assert single == 24_981_069  # one SegNet for 13-class segmentation: what MTAN's code divides by
    assert round(total / single, 2) == 1.77
    cityscapes = _model((64, 128, 256, 512, 512), {"seg": 7, "depth": 1})
    assert _count(cityscapes.parameters()) == 41_206_984


def test_gradients_reach_the_shared_convs_from_every_task() -> None:
    torch.manual_seed(0)
    model = _model(SMALL, NYU)
    out = model(torch.randn(2, 3, 32, 64)).outputs
    shared = model.heads["seg"].shared  # type: ignore[union-attr]
    grads = []
    for task in NYU:
        model.zero_grad()
        out[task].square().mean().backward(retain_graph=True)
        grads.append(shared.encoder[0][0].weight.grad.clone())
        assert model.heads[task].encoder_masks[0][0].weight.grad is not None
        others = [t for t in NYU if t != task]
        assert all(model.heads[t].encoder_masks[0][0].weight.grad is None for t in others)
    assert all(g.abs().sum() > 0 for g in grads)


def test_mtan_needs_the_segnet_backbone(tmp_path: Path) -> None:
    contract = create_backbone("unet_small", in_channels=3).contract
    with pytest.raises(ConfigError, match="task_args.head=mtan needs --backbone segnet"):
        mtan_heads(contract, NYU)
    root = write_fixture(tmp_path / "data", "nyuv2", {"train": 4, "val": 2})
    cfg = resolve_config(
        [f"data.root={root}", f"output_dir={tmp_path / 'runs'}", "task_args.head=mtan"],
        task="nyuv2",
        backbone="unet_small",
        preset="smoke",
    )
    with pytest.raises(ConfigError, match="needs --backbone segnet"):
        prepare_run(cfg)


def test_the_head_refuses_maps_of_another_pass() -> None:
    model = _model(SMALL, {"depth": 1})
    head = model.heads["depth"]
    assert isinstance(head, MTANHead)
    features = model.backbone(torch.randn(1, 3, 32, 64))
    model.backbone(torch.randn(1, 3, 64, 64))
    with pytest.raises(RuntimeError, match="not from the pass"):
        head(features)


def test_heads_in_float32_after_a_half_precision_backbone() -> None:
    """The trainer's path for representation-gradient methods under fp16 (here bf16, which the CPU
    has): backbone under autocast, features cast to float32, heads without autocast."""
    torch.manual_seed(0)
    model = _model(SMALL, {"seg": 7, "depth": 1})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.backbone(torch.randn(2, 3, 32, 64))
    assert features[0].dtype == torch.bfloat16
    with torch.autocast("cpu", enabled=False):
        floats = [f.float() for f in features]
        out = {name: head(floats) for name, head in model.heads.items()}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())


@pytest.fixture(scope="module")
def city_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("cityscapes"), "cityscapes", {"train": 4, "val": 2})


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_a_step_on_segnet_mtan(method: str, city_root: Path, tmp_path: Path) -> None:
    if method == "libmtl":
        pytest.importorskip("LibMTL")
    overrides = [
        f"data.root={city_root}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'c'}",
        "backbone_args.widths=[4, 8, 8, 16, 16]",
        "train.progress=false",
        "train.steps_per_epoch=1",
        "train.epochs=1",
        "train.eval_batch_size=2",
        "data.val_from_train=0.25",
    ]
    cfg = resolve_config(overrides, task="cityscapes", method=method, preset="segnet_mtan")
    assert (cfg.backbone, cfg.task_args["head"]) == ("segnet", "mtan")
    result = run_experiment(cfg).result
    assert result["steps"] == 1 and result["skipped_steps"] == 0
    assert math.isfinite(result["metrics"]["val"]["miou"])
