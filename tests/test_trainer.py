"""The common trainer: a full run's outputs, resuming, non-finite losses, mixed precision."""

from __future__ import annotations

import json

import pytest
import torch

from mtlbench.config import ConfigError, resolve_config
from mtlbench.registry import list_methods
from mtlbench.resolve import resolve_run
from mtlbench.results import read_index
from mtlbench.runner import prepare_run, run_experiment
from mtlbench.trainer import NonFiniteLossError, StopTraining, epoch_batches
from tests.tiny import tiny_run_overrides


def test_run_writes_every_result_file(tmp_path) -> None:
    cfg = resolve_config(tiny_run_overrides(tmp_path), method="rlar")
    outcome = run_experiment(cfg)
    root = outcome.folder.root
    assert root.parent == tmp_path / "runs" / "thyroid"
    for name in ("config.yaml", "metrics.jsonl", "result.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (root / name).is_file(), name
    lines = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert "rlar_penalty" in lines[0]["train"] and "loss/seg" in lines[0]["train"]
    # diagnostics on step 0 (train.diagnostics_every=20): shared-gradient cosines for every method,
    # and where RLAR's penalty gradient lands, per module
    for key in ("diag_cos/seg-cls", "diag_cos/cls-clin", "rlar_grad_norm/encoder", "rlar_grad_norm/head/seg"):
        assert key in lines[0]["train"], key
    assert "diag_cos/seg-cls" not in lines[1]["train"]  # steps 2-3 are not diagnostic steps
    assert lines[0]["train"]["rlar_grad_norm/head/cls"] > 0
    result = json.loads((root / "result.json").read_text())
    for split in ("val", "test", "external"):
        m = result["metrics"][split]
        for key in ("dice", "iou", "hd95", "precision", "recall", "f1", "confusion", "clinical_mse"):
            if split != "val" and key == "clinical_mse":
                continue  # radiomics targets exist for training and validation only
            assert key in m, (split, key)
    for key in ("wall_time_s", "mean_step_time_s", "peak_memory_mb", "versions", "device", "run_id"):
        assert key in result
    assert result["run_id"] == outcome.folder.run_id == resolve_run(cfg).run_id
    assert result["steps"] == 6
    index = read_index(tmp_path / "runs")
    assert [r["run_id"] for r in index] == [result["run_id"]]
    # a second call finds the finished run and does not train again
    again = run_experiment(cfg)
    assert again.already_finished and again.result["run_id"] == result["run_id"]


@pytest.mark.parametrize("method", ["vanilla", "rlar"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, method: str) -> None:
    straight = resolve_config(tiny_run_overrides(tmp_path / "a"), method=method)
    interrupted = resolve_config(tiny_run_overrides(tmp_path / "b"), method=method)
    run_experiment(straight)
    with pytest.raises(StopTraining):
        run_experiment(interrupted, stop_after_epochs=2)
    outcome = run_experiment(interrupted)
    assert outcome.resumed
    a = torch.load(
        tmp_path / "a" / "runs" / "thyroid" / outcome.folder.root.name / "checkpoints" / "last.pt",
        weights_only=False,
    )
    b = torch.load(outcome.folder.checkpoint_path("last"), weights_only=False)
    assert a["state"]["global_step"] == b["state"]["global_step"] == 6
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    epochs = [json.loads(line)["epoch"] for line in outcome.folder.metrics_path.read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_batches_depend_only_on_seed_and_epoch() -> None:
    assert epoch_batches(100, 3, 4, seed=1, epoch=5) == epoch_batches(100, 3, 4, seed=1, epoch=5)
    assert epoch_batches(100, 3, 4, seed=1, epoch=5) != epoch_batches(100, 3, 4, seed=1, epoch=6)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch) -> None:
    cfg = resolve_config(tiny_run_overrides(tmp_path), method="vanilla")
    prepared = prepare_run(cfg)
    original = prepared.task.compute_losses

    def poisoned(output, batch):  # type: ignore[no-untyped-def]
        losses = original(output, batch)
        losses["cls"] = losses["cls"] * float("nan")
        return losses

    monkeypatch.setattr(prepared.task, "compute_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 1: \{'cls': nan\}"):
        run_experiment(cfg, prepared=prepared)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path, amp: str) -> None:
    cfg = resolve_config(tiny_run_overrides(tmp_path, **{"train.amp": amp, "train.epochs": 1}), method="rlar")
    outcome = run_experiment(cfg)
    assert outcome.result["precision"] == amp
    assert outcome.result["steps"] == 2
    line = json.loads(outcome.folder.metrics_path.read_text().splitlines()[0])
    if amp == "bf16":
        assert line["skipped_steps"] == 0
    for value in line["train"].values():
        assert value == value  # not NaN


@pytest.mark.parametrize("method", list_methods())
def test_every_registered_method_trains_through_the_runner(tmp_path, method: str) -> None:
    if method == "libmtl":
        from mtlbench.libmtl_compat import import_libmtl

        try:
            import_libmtl("weighting")
        except ModuleNotFoundError:
            pytest.skip("LibMTL is not installed")
    cfg = resolve_config(
        tiny_run_overrides(tmp_path, **{"train.epochs": 2, "data.num_external": 0}), method=method
    )
    outcome = run_experiment(cfg)
    result = outcome.result
    assert result["steps"] == 4 and result["skipped_steps"] == 0
    for split in ("val", "test"):
        for key in ("dice", "f1"):
            assert 0.0 <= result["metrics"][split][key] <= 1.0
    first = json.loads(outcome.folder.metrics_path.read_text().splitlines()[0])
    assert all(v == v for v in first["train"].values()), first["train"]  # no NaN in the logs


def test_nnunet_checkpoint_initialises_the_run_and_is_reported(tmp_path) -> None:
    from tests.backbones.test_nnunet_checkpoint import nnunet_network, save_checkpoint

    checkpoint = save_checkpoint(nnunet_network(), tmp_path / "checkpoint_final.pth")
    overrides = tiny_run_overrides(tmp_path, **{"train.epochs": 1, "data.num_external": 0})
    overrides = [o for o in overrides if not o.startswith("backbone_args.")]
    overrides += [
        "backbone_args.n_stages=4",
        "backbone_args.features_per_stage=[8, 16, 32, 64]",
        f"nnunet_checkpoint={checkpoint}",
    ]
    cfg = resolve_config(overrides, method="vanilla", backbone="nnunet_plain")
    prepared = prepare_run(cfg)
    expected = nnunet_network().state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    assert torch.equal(prepared.model.backbone.encoder.stages[0][0].convs[0].conv.weight, expected)
    outcome = run_experiment(cfg, prepared=prepared)
    assert (outcome.folder.root / "pretrained_report.txt").is_file()
    assert outcome.result["pretrained"]["encoder"]
    missing = resolve_config([*overrides[:-1], "nnunet_checkpoint=/nope.pth"], backbone="nnunet_plain")
    with pytest.raises(ConfigError, match="nnunet_checkpoint '/nope.pth' does not exist"):
        prepare_run(missing)
