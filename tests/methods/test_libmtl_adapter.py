"""LibMTL adapter: EW equals vanilla, PCGrad equals ours, heads counted once, state, clear errors."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

from mtlbench.api.method import StepInputs
from mtlbench.libmtl_compat import import_libmtl
from mtlbench.methods.libmtl_adapter import LibMTLAdapter, LibMTLParams, libmtl_weighting_names
from mtlbench.registry import create_method, list_methods

try:
    import_libmtl("weighting")
except ModuleNotFoundError:
    pytest.skip("LibMTL is an optional reference (pip install LibMTL)", allow_module_level=True)

TASKS = ["a", "b", "c"]


class Tiny(nn.Module):
    """A shared linear layer and one linear head per task."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in tasks})

    def step_inputs(self, seed: int = 0, weights: dict[str, float] | None = None) -> StepInputs:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 4, generator=g)
        z = torch.tanh(self.shared(x))
        losses = {t: (head(z) - i).pow(2).mean() for i, (t, head) in enumerate(self.heads.items())}
        return StepInputs(
            losses,
            weights or {t: 1.0 + 0.5 * i for i, t in enumerate(self.heads)},
            list(self.shared.parameters()),
            representations={},
            step=0,
            head_parameters=list(self.heads.parameters()),
        )

    def grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.clone() for n, p in self.named_parameters()}


def run(method: object, tasks: list[str], seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    torch.manual_seed(seed)
    model = Tiny(tasks)
    logs = method.backward(model.step_inputs(seed))  # type: ignore[attr-defined]
    assert all(isinstance(v, float) for v in logs.values())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return model.grads(), logs


def test_ew_equals_vanilla() -> None:
    ours, _ = run(create_method("vanilla", TASKS), TASKS)
    theirs, logs = run(LibMTLAdapter(TASKS), TASKS)
    for name in ours:
        assert torch.allclose(theirs[name], ours[name], rtol=1e-6, atol=1e-7), name
    assert logs["weight/a"] == 1.0


def test_pcgrad_two_tasks_matches_ours() -> None:
    """Two tasks: the projection order does not matter, so LibMTL's PCGrad equals ours exactly.

    Conventions shared by both: a sum over tasks, projections on the shared parameters only, heads
    with their ordinary gradient of Σ λ_t L_t.
    """
    tasks = ["a", "b"]
    theirs, _ = run(LibMTLAdapter(tasks, LibMTLParams("PCGrad")), tasks, seed=1)
    assert theirs["shared.weight"].shape == (6, 4)
    try:
        importlib.import_module("mtlbench.methods.pcgrad")  # registers it even before the catalog lists it
    except ModuleNotFoundError:
        pass
    if "pcgrad" not in list_methods():
        pytest.skip("no pcgrad method registered")
    ours, _ = run(create_method("pcgrad", tasks), tasks, seed=1)
    for name in ours:
        assert torch.allclose(theirs[name], ours[name], rtol=1e-5, atol=1e-7), name


def test_heads_get_their_ordinary_gradient_once() -> None:
    torch.manual_seed(0)
    model = Tiny(TASKS)
    inputs = model.step_inputs()
    expected = torch.autograd.grad(inputs.weighted_sum(), list(model.heads.parameters()), retain_graph=True)
    LibMTLAdapter(TASKS, LibMTLParams("PCGrad")).backward(inputs)
    for p, e in zip(model.heads.parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-6, atol=1e-8)


def test_existing_gradients_are_accumulated() -> None:
    fresh, _ = run(LibMTLAdapter(TASKS, LibMTLParams("MGDA")), TASKS)
    torch.manual_seed(0)
    model = Tiny(TASKS)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    LibMTLAdapter(TASKS, LibMTLParams("MGDA")).backward(model.step_inputs())
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, fresh[name] + 1, atol=1e-6), name


def test_cagrad_with_kwargs_three_tasks_only() -> None:
    method = LibMTLAdapter(TASKS, LibMTLParams("CAGrad", {"calpha": "0.4", "rescale": 1}))
    assert method.kwargs == {"calpha": 0.4, "rescale": 1}  # command-line text converted
    grads, logs = run(method, TASKS)
    ew, _ = run(LibMTLAdapter(TASKS), TASKS)
    assert not torch.allclose(grads["shared.weight"], ew["shared.weight"])
    assert set(logs) >= {"weight/a", "weight/b", "weight/c"}
    with pytest.raises(ValueError, match="hard-codes three tasks"):
        LibMTLAdapter(["a", "b"], LibMTLParams("CAGrad"))


def test_learnable_weights_are_parameters_and_checkpointed() -> None:
    method = LibMTLAdapter(TASKS, LibMTLParams("UW"))
    params = dict(method.named_parameters())
    assert list(params) == ["weighting.loss_scale"]
    run(method, TASKS)
    assert params["weighting.loss_scale"].grad is not None
    assert "weighting.loss_scale" in method.state_dict()


def test_epoch_buffer_drives_dwa_and_is_checkpointed() -> None:
    method = LibMTLAdapter(TASKS, LibMTLParams("DWA", {"T": 2.0}))
    _, logs = run(method, TASKS)
    assert [logs[f"weight/{t}"] for t in TASKS] == [1.0, 1.0, 1.0]
    method.on_epoch_end(1, {"a": 1.0, "b": 1.0, "c": 1.0})
    method.on_epoch_end(2, {"a": 0.5, "b": 1.0, "c": 2.0})
    _, logs = run(method, TASKS)
    weights = [logs[f"weight/{t}"] for t in TASKS]
    assert weights[0] < weights[1] < weights[2] and sum(weights) == pytest.approx(3.0)
    restored = LibMTLAdapter(TASKS, LibMTLParams("DWA"))
    restored.load_state_dict(method.state_dict())
    assert restored.weighting.epoch == 2
    assert restored.weighting.train_loss_buffer.tolist() == [[1.0, 0.5], [1.0, 1.0], [1.0, 2.0]]


def test_unknown_weighting_suggests_close_match() -> None:
    assert {"EW", "PCGrad", "CAGrad", "MGDA"} <= set(libmtl_weighting_names())
    with pytest.raises(ValueError, match=r"Found `weighting = 'PCgrad'`\. Did you mean 'PCGrad'"):
        LibMTLAdapter(TASKS, LibMTLParams("PCgrad"))
    with pytest.raises(ValueError, match="Did you mean 'calpha'"):
        LibMTLAdapter(TASKS, LibMTLParams("CAGrad", {"alpha": 0.4}))
    with pytest.raises(ValueError, match="representation gradients"):
        LibMTLAdapter(TASKS, LibMTLParams("GradDrop"))


def test_fp16_scaling_refused_for_non_proportional_weightings() -> None:
    torch.manual_seed(0)
    model = Tiny(TASKS)
    inputs = model.step_inputs()
    inputs.loss_scale = 1024.0
    with pytest.raises(NotImplementedError, match="bf16 or fp32"):
        LibMTLAdapter(TASKS, LibMTLParams("UW")).backward(inputs)


def test_missing_libmtl_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "LibMTL" or m.startswith("LibMTL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "LibMTL", None)
    with pytest.raises(ModuleNotFoundError, match="pip install LibMTL"):
        LibMTLAdapter(TASKS)
