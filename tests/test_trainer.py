"""The common trainer: a full run's outputs, resuming, non-finite losses, mixed precision.

These run on the example plugin's small ``twoshapes`` task (tasks ``mask`` and ``level``), so they
test the core and not a task family.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from mtlbench.config import ConfigError, resolve_config
from mtlbench.resolve import resolve_run
from mtlbench.results import read_index
from mtlbench.runner import prepare_run, run_experiment
from mtlbench.trainer import NonFiniteLossError, StopAfterEpochs, StopTraining, epoch_batches
from tests.tiny import core_run_overrides


def test_run_writes_every_result_file(tmp_path) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path), method="rlar")
    outcome = run_experiment(cfg)
    root = outcome.folder.root
    assert root.parent == tmp_path / "runs" / "twoshapes"
    for name in ("config.yaml", "metrics.jsonl", "result.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (root / name).is_file(), name
    lines = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert "rlar_penalty" in lines[0]["train"] and "loss/mask" in lines[0]["train"]
    # diagnostics on step 0 (train.diagnostics_every=20): shared-gradient cosines for every method,
    # and where RLAR's penalty gradient lands, per module
    for key in ("diag_cos/mask-level", "rlar_grad_norm/encoder", "rlar_grad_norm/head/mask"):
        assert key in lines[0]["train"], key
    assert "diag_cos/mask-level" not in lines[1]["train"]  # steps 2-3 are not diagnostic steps
    assert lines[0]["train"]["rlar_grad_norm/head/level"] > 0
    # the task's default monitor picks the best checkpoint
    assert all("score" in line["val"] for line in lines)
    result = json.loads((root / "result.json").read_text())
    assert result["monitor"] == {"metric": "score", "mode": "max", "best": result["monitor"]["best"]}
    assert set(result["metrics"]) == {"val", "test"}
    for split in ("val", "test"):
        for key in ("pixel_accuracy", "accuracy", "score"):
            assert 0.0 <= result["metrics"][split][key] <= 1.0, (split, key)
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
    straight = resolve_config(core_run_overrides(tmp_path / "a"), method=method)
    interrupted = resolve_config(core_run_overrides(tmp_path / "b"), method=method)
    run_experiment(straight)
    with pytest.raises(StopTraining):
        run_experiment(interrupted, callbacks=(StopAfterEpochs(2),))
    outcome = run_experiment(interrupted)
    assert outcome.resumed
    a = torch.load(
        tmp_path / "a" / "runs" / "twoshapes" / outcome.folder.root.name / "checkpoints" / "last.pt",
        weights_only=True,
    )
    b = torch.load(outcome.folder.checkpoint_path("last"), weights_only=True)
    assert a["state"]["global_step"] == b["state"]["global_step"] == 6
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    epochs = [json.loads(line)["epoch"] for line in outcome.folder.metrics_path.read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_batches_depend_only_on_seed_and_epoch() -> None:
    assert epoch_batches(100, 3, 4, seed=1, epoch=5) == epoch_batches(100, 3, 4, seed=1, epoch=5)
    assert epoch_batches(100, 3, 4, seed=1, epoch=5) != epoch_batches(100, 3, 4, seed=1, epoch=6)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path), method="vanilla")
    prepared = prepare_run(cfg)
    original = prepared.task.compute_losses

    def poisoned(output, batch):  # type: ignore[no-untyped-def]
        losses = original(output, batch)
        losses["level"] = losses["level"] * float("nan")
        return losses

    monkeypatch.setattr(prepared.task, "compute_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 1: \{'level': nan\}"):
        run_experiment(cfg, prepared=prepared)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path, amp: str) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path, **{"train.amp": amp, "train.epochs": 1}), method="rlar")
    outcome = run_experiment(cfg)
    assert outcome.result["precision"] == amp
    assert outcome.result["steps"] == 2
    line = json.loads(outcome.folder.metrics_path.read_text().splitlines()[0])
    if amp == "bf16":
        assert line["skipped_steps"] == 0
    for value in line["train"].values():
        assert value == value  # not NaN


@pytest.mark.parametrize("representation", ["bottleneck", "last"])
def test_fp16_heads_run_in_float32_for_representation_methods(tmp_path, representation: str) -> None:
    """Under fp16 RLAR's heads and losses are float32 and the probed level keeps its total derivative:
    the bottleneck is the heads' float32 input, a shallower level the backbone's own (fp16) tensor."""
    from mtlbench.bench.harness import build_harness

    settings = {"train.amp": "fp16", "method_args.representation": representation}
    rlar = build_harness(resolve_config(core_run_overrides(tmp_path, **settings), method="rlar")).trainer
    output, losses = rlar.forward_losses(
        rlar_batch := next(iter(rlar._loader(rlar.splits.train, [[0, 1, 2, 3]])))
    )
    assert all(f.dtype == torch.float32 for f in output.head_inputs)
    assert all(v.dtype == torch.float32 for v in losses.values())
    z = output.representations[representation]
    assert z.dtype == (torch.float32 if representation == "bottleneck" else torch.float16)
    assert (z is output.head_inputs[-1]) == (representation == "bottleneck")
    assert rlar.train_step(rlar_batch) is not None or rlar.precision.loss_scale < 2.0**16
    plain = build_harness(
        resolve_config(core_run_overrides(tmp_path, **{"train.amp": "fp16"}), method="vanilla")
    )
    out, _ = plain.trainer.forward_losses(plain.batch)
    assert out.head_inputs[0].dtype == torch.float16  # other methods: autocast everywhere


def test_a_task_monitor_can_be_overridden_and_is_checked(tmp_path) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path, **{"train.monitor": "accuracy"}), method="vanilla")
    assert resolve_run(cfg).config.train.monitor == "accuracy"
    assert resolve_run(cfg).config.train.monitor_mode == "max"
    bad = resolve_config(core_run_overrides(tmp_path, **{"train.monitor": "dice"}), method="vanilla")
    with pytest.raises(ConfigError, match="train.monitor 'dice' is not a validation metric"):
        run_experiment(bad)
    assert not (tmp_path / "runs").exists()  # found before anything was written


def test_input_size_is_checked_against_the_backbone_stride(tmp_path) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path, **{"data.image_size": 18}), method="vanilla")
    with pytest.raises(ConfigError, match=r"18×18 inputs .* not a multiple of 4"):
        prepare_run(cfg)
    assert not (tmp_path / "runs").exists()


def test_model_selection_sees_the_whole_split_or_a_fresh_draw_each_epoch() -> None:
    from mtlbench.trainer import eval_batches

    whole = eval_batches(100, 8, None, seed=0, epoch=3)
    assert sorted(i for b in whole for i in b) == list(range(100))
    first, second = (eval_batches(100, 8, 3, seed=0, epoch=e) for e in (0, 1))
    assert len(first) == 3 and all(len(b) == 8 for b in first)
    assert first != second  # a different draw every epoch ...
    assert first != [list(range(i, i + 8)) for i in range(0, 24, 8)]  # ... never the file order's head
    assert first == eval_batches(100, 8, 3, seed=0, epoch=0)  # ... and reproducible
    assert eval_batches(20, 8, 5, seed=0, epoch=0) == eval_batches(20, 8, None)  # asks for more than there is


def test_deterministic_sets_every_gpu_switch_and_restores_them(monkeypatch) -> None:
    # On a GPU `train.deterministic` must mean bit-identical reruns: cuDNN deterministic kernels without
    # autotuning, PyTorch's deterministic algorithms, a fixed cuBLAS workspace. (The switches are set the
    # same way without a GPU; their cost is measured on one, see the README.)
    from mtlbench.runner import apply_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda")
    try:
        apply_determinism(True, cuda)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        apply_determinism(False, cuda)
        assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False
