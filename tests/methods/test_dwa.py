"""DWA (Liu 2019): three fake epochs by hand, LibMTL parity, state round trip, validation, trainer hooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.api.method import StepInputs
from mtlbench.config import resolve_config
from mtlbench.methods.dwa import DWA, DWAParams, dwa_weights
from mtlbench.runner import run_experiment
from mtlbench.trainer import StopAfterEpochs, StopTraining
from tests.methods.test_uw import TinyMTL, leaf_inputs, libmtl_weighting
from tests.tiny import tiny_run_overrides


def softmax_times_k(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [len(values) * e / sum(exps) for e in exps]


def test_three_fake_epochs_by_hand() -> None:
    dwa = DWA(("a", "b"))
    inputs, losses = leaf_inputs([3.0, 5.0], [1.0, 0.5])
    logs = dwa.backward(inputs)  # epoch 1: equal weights
    assert (logs["weight/a"], logs["weight/b"]) == (1.0, 1.0)
    assert logs["loss"] == pytest.approx(3.0 + 2.5)
    assert torch.allclose(losses.grad, torch.tensor([1.0, 0.5]))

    dwa.on_epoch_end(1, {"a": 2.0, "b": 1.0})
    assert dwa.backward(leaf_inputs([1.0, 1.0], [1.0, 1.0])[0])["weight/a"] == 1.0  # epoch 2: still 1
    dwa.on_epoch_end(2, {"a": 1.0, "b": 1.0})
    # epoch 3: w = (1/2, 1/1), λ = 2·softmax(w/2) = 2·(e^0.25, e^0.5)/(e^0.25 + e^0.5)
    expected = [2 * math.exp(0.25) / (math.exp(0.25) + math.exp(0.5)), 0.0]
    expected[1] = 2 - expected[0]
    assert expected == pytest.approx([0.875647, 1.124353], abs=1e-6)
    inputs, losses = leaf_inputs([3.0, 5.0], [1.0, 0.5])
    logs = dwa.backward(inputs)
    assert [logs["weight/a"], logs["weight/b"]] == pytest.approx(expected, rel=1e-9)
    assert logs["loss"] == pytest.approx(expected[0] * 3.0 + expected[1] * 0.5 * 5.0, rel=1e-6)
    assert torch.allclose(losses.grad, torch.tensor([expected[0], 0.5 * expected[1]]))

    dwa.on_epoch_end(3, {"a": 0.5, "b": 2.0})  # epoch 4: w = (0.5/1, 2/1)
    logs = dwa.backward(leaf_inputs([1.0, 1.0], [1.0, 1.0])[0])
    assert [logs["weight/a"], logs["weight/b"]] == pytest.approx(softmax_times_k([0.5, 2.0], 2.0), rel=1e-9)


def test_temperature_and_zero_denominator() -> None:
    prev, before = torch.tensor([1.0, 4.0, 2.0]), torch.tensor([2.0, 2.0, 0.0])
    hot = dwa_weights(prev, before, temperature=1e6)
    assert torch.allclose(hot, torch.ones(3), atol=1e-5)  # T → ∞: equal weights
    w = dwa_weights(prev, before, temperature=1.0)
    assert w.tolist() == pytest.approx(softmax_times_k([0.5, 2.0, 1.0], 1.0))  # 2/0 counts as 1
    assert float(w.sum()) == pytest.approx(3.0)


def test_matches_libmtl_dwa() -> None:
    """LibMTL's DWA (0-based ``epoch``; epoch > 1 uses the previous two epoch means) with T = 2."""
    ref = libmtl_weighting("DWA")()
    ref.task_num, ref.device = 3, torch.device("cpu")
    rng = np.random.default_rng(0)
    history = rng.uniform(0.1, 3.0, size=(3, 6))
    ours = DWA(("a", "b", "c"))
    for epoch in range(6):  # 0-based, as LibMTL counts
        ref.epoch, ref.train_loss_buffer = epoch, history
        expected = ref.backward(torch.ones(3, requires_grad=True), T=2.0)
        logs = ours.backward(leaf_inputs([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])[0])
        assert [logs[f"weight/{t}"] for t in "abc"] == pytest.approx(list(expected), rel=1e-6), epoch
        ours.on_epoch_end(epoch + 1, dict(zip("abc", history[:, epoch].tolist())))


def test_state_dict_round_trip_reproduces_the_next_step() -> None:
    dwa = DWA(("a", "b"), DWAParams(temperature=0.7))
    for e, losses in enumerate([{"a": 1.0, "b": 2.0}, {"a": 0.8, "b": 1.5}, {"a": 0.7, "b": 1.4}], start=1):
        dwa.on_epoch_end(e, losses)
    fresh = DWA(("a", "b"), DWAParams(temperature=0.7))
    fresh.load_state_dict(dwa.state_dict())
    for method in (dwa, fresh):
        method.on_epoch_end(4, {"a": 0.6, "b": 1.0})
    a = dwa.backward(leaf_inputs([1.0, 1.0], [1.0, 1.0])[0])
    b = fresh.backward(leaf_inputs([1.0, 1.0], [1.0, 1.0])[0])
    assert a == b and a["weight/a"] != 1.0


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="`temperature = "):
        DWA(("a", "b"), DWAParams(temperature=bad))


def test_missing_task_in_epoch_losses_is_an_error() -> None:
    with pytest.raises(KeyError, match="'b'"):
        DWA(("a", "b")).on_epoch_end(1, {"a": 1.0})


def test_search_space_suggests_the_temperature() -> None:
    class Trial:
        def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
            assert name == "temperature" and 0 < low < 2.0 < high and log
            return 3.0

    assert DWA.search_space(Trial()) == {"temperature": 3.0}


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(0)
    model = TinyMTL()
    dwa = DWA(("a", "b"))
    for e in (1, 2):
        dwa.on_epoch_end(e, {"a": 1.0 / e, "b": 1.0})
    inputs: StepInputs = model.inputs()
    logs = dwa.backward(inputs)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_trainer_hooks_and_resume(tmp_path: Path) -> None:
    """Through the real trainer, interrupted after 2 of 3 epochs: epoch 3 uses the formula on the
    epoch means of epochs 1–2 (read back from the metrics log), restored from the checkpoint."""
    cfg = resolve_config(tiny_run_overrides(tmp_path), method="dwa")
    with pytest.raises(StopTraining):
        run_experiment(cfg, callbacks=(StopAfterEpochs(2),))
    outcome = run_experiment(cfg)
    assert outcome.resumed
    records = [json.loads(line)["train"] for line in outcome.folder.metrics_path.read_text().splitlines()]
    tasks = ("seg", "cls", "clin")
    for r in records[:2]:
        assert all(r[f"weight/{t}"] == 1.0 for t in tasks)
    expected = softmax_times_k([records[1][f"loss/{t}"] / records[0][f"loss/{t}"] for t in tasks], 2.0)
    assert [records[2][f"weight/{t}"] for t in tasks] == pytest.approx(expected, rel=1e-6)
