"""RLW (Lin 2022): weights from a (seed, step)-seeded generator, LibMTL parity, seed handling and
state round trip, validation, end to end."""

from __future__ import annotations

import math

import pytest
import torch

from mtlbench.methods.rlw import RLW, RLWParams, rlw_weights
from tests.methods.test_uw import TinyMTL, leaf_inputs, libmtl_weighting


def expected_weights(seed: int, step: int, k: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    eps = torch.randn(k, generator=gen).tolist()
    exps = [math.exp(e) for e in eps]
    return [e / sum(exps) for e in exps]


def test_weights_and_objective_for_one_step() -> None:
    rlw = RLW(("a", "b", "c"), RLWParams(seed=7))
    inputs, losses = leaf_inputs([1.0, 2.0, 3.0], [1.0, 0.5, 2.0])
    inputs.step = 11
    logs = rlw.backward(inputs)
    w = expected_weights(7, 11, 3)
    assert [logs[f"weight/{t}"] for t in "abc"] == pytest.approx(w, rel=1e-6)
    assert sum(w) == pytest.approx(1.0) and min(w) > 0
    assert logs["loss"] == pytest.approx(w[0] * 1.0 + w[1] * 0.5 * 2.0 + w[2] * 2.0 * 3.0, rel=1e-6)
    assert torch.allclose(losses.grad, torch.tensor([w[0], 0.5 * w[1], 2.0 * w[2]]))


def test_weights_depend_only_on_seed_and_step_and_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = rlw_weights(3, 5, 4)
    torch.manual_seed(123)  # global RNG changes must not matter
    assert torch.equal(a, rlw_weights(3, 5, 4))
    assert not torch.equal(a, rlw_weights(3, 6, 4)) and not torch.equal(a, rlw_weights(4, 5, 4))
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    RLW(("a", "b"), RLWParams(seed=1)).backward(leaf_inputs([1.0, 1.0], [1.0, 1.0])[0])
    assert torch.equal(before, torch.get_rng_state())


def test_matches_libmtl_rlw_on_the_same_sample() -> None:
    """LibMTL's ``dist='Normal'`` RLW is softmax(ε), ε ~ N(0, I); fed our ε it gives our weights."""
    ref = libmtl_weighting("RLW")()
    ref.task_num, ref.device = 3, torch.device("cpu")
    for step in range(5):
        eps = torch.randn(3, generator=torch.Generator().manual_seed(9 * 1_000_003 + step))
        ref.distribution = type("Fixed", (), {"sample": staticmethod(lambda eps=eps: eps.clone())})()
        expected = ref.backward(torch.ones(3, requires_grad=True), dist="Normal")
        inputs = leaf_inputs([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])[0]
        inputs.step = step
        logs = RLW(("a", "b", "c"), RLWParams(seed=9)).backward(inputs)
        assert [logs[f"weight/{t}"] for t in "abc"] == pytest.approx(list(expected), rel=1e-6)


def test_default_seed_is_the_run_seed_and_survives_a_resume() -> None:
    torch.manual_seed(42)  # the runner seeds torch with the configured seed before training
    rlw = RLW(("a", "b"))
    assert int(rlw.seed) == -1  # not fixed until the first step
    first = rlw.backward(leaf_inputs([1.0, 1.0], [1.0, 1.0])[0])
    assert int(rlw.seed) == 42
    assert [first["weight/a"], first["weight/b"]] == pytest.approx(expected_weights(42, 0, 2), rel=1e-6)
    torch.manual_seed(0)  # a resumed process: the checkpointed seed wins
    fresh = RLW(("a", "b"))
    fresh.load_state_dict(rlw.state_dict())
    inputs = [leaf_inputs([1.0, 2.0], [1.0, 1.0])[0] for _ in range(2)]
    for i in inputs:
        i.step = 17
    assert rlw.backward(inputs[0]) == fresh.backward(inputs[1])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_seed_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="`seed = "):
        RLW(("a", "b"), RLWParams(seed=bad))  # type: ignore[arg-type]


def test_end_to_end_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(1)
    model = TinyMTL()
    logs = RLW(("a", "b"), RLWParams(seed=0)).backward(model.inputs(step=3))
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
