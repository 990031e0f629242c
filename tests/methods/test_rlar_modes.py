"""RLAR's opt-in cheaper modes through the trainer's own step: ``every`` k steps and a ``subset``.

Checked against independent computations on the example plugin's task (per-sample GroupNorm and
per-sample losses averaged over the batch, so samples are independent):

* ``every=k``: off-steps are exactly the plain weighted sum's step; on-steps are RLAR with λ·k.
* ``subset=m``: the gradient is the full batch's objective plus λ times the penalty of a *separate*
  forward of the model on those m samples only; over all m-subsets the penalty averages to the
  full batch's penalty (unbiased).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mtlbench.bench.harness import StepHarness, build_harness
from mtlbench.config import resolve_config
from mtlbench.methods.rlar import (
    RLAR,
    RLARParams,
    float32_representation_gradients,
    rlar_penalty_from_gradients,
)
from tests.tiny import core_run_overrides

BATCH = 4


def harness(tmp_path, method: str = "rlar", **args: object) -> StepHarness:
    extra = {f"method_args.{k}": ("null" if v is None else v) for k, v in args.items()}
    overrides = core_run_overrides(tmp_path, **{"train.batch_size": BATCH, "train.lr": 0.0, **extra})
    return build_harness(resolve_config(overrides, method=method))


def grads_after_backward(h: StepHarness, step: int) -> dict[str, torch.Tensor]:
    """``.grad`` of every parameter after the trainer's step ``step`` (lr 0: weights stay put)."""
    h.trainer.state.global_step = step
    h.trainer.train_step(h.batch)
    return {n: p.grad.clone() for n, p in h.trainer.model.named_parameters() if p.grad is not None}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-6) -> None:
    """Equal to ``rel`` of each tensor's largest entry, or of a tenth of the largest gradient
    entry of the model, whichever is larger: the conv biases before a per-sample norm have a true
    gradient of zero (the norm removes them), and theirs is rounding (~1e-8)."""
    assert a.keys() == b.keys()
    floor = 0.1 * max(float(v.abs().max()) for v in b.values())
    for name in a:
        scale = max(float(b[name].abs().max()), floor)
        assert torch.allclose(a[name], b[name], rtol=rel, atol=rel * scale), name


def test_every_k_is_the_weighted_sum_off_step_and_rlar_times_k_on_step(tmp_path) -> None:
    lazy = harness(tmp_path, every=3, lambda_adv=0.2)
    plain = harness(tmp_path, method="vanilla")
    full = harness(tmp_path, every=1, lambda_adv=0.6)
    for step in (1, 2, 4):
        assert_same(grads_after_backward(lazy, step), grads_after_backward(plain, step))
    for step in (0, 3):
        assert_same(grads_after_backward(lazy, step), grads_after_backward(full, step))


def subset_reference(h: StepHarness, indices: list[int], lambda_adv: float) -> dict[str, torch.Tensor]:
    """Full-batch weighted objective + λ · penalty of a separate forward on ``indices`` only."""
    trainer = h.trainer
    model, task = trainer.model, trainer.task
    model.zero_grad(set_to_none=True)
    objective = sum(
        trainer.weights[t] * v for t, v in task.compute_losses(model(h.batch["image"]), h.batch).items()
    )
    sub_batch = {k: v[indices] for k, v in h.batch.items()}
    out = model(sub_batch["image"])
    losses = task.compute_losses(out, sub_batch)
    grads = float32_representation_gradients(
        [losses[t] for t in task.task_names], out.representations["bottleneck"]
    )
    penalty = lambda_adv * rlar_penalty_from_gradients(grads)[0]
    (objective + penalty).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_subset_gradient_equals_a_separate_forward_of_the_subset(tmp_path) -> None:
    h = harness(tmp_path, subset=2, lambda_adv=0.5, seed=11)
    step = 5
    indices = (
        RLAR(h.trainer.task.task_names, RLARParams(subset=2, seed=11)).subset_indices(step, BATCH).tolist()
    )
    assert len(indices) == 2 and len(set(indices)) == 2
    got = grads_after_backward(h, step)
    assert_same(got, subset_reference(h, indices, 0.5), rel=1e-5)


def test_subset_draws_are_seeded_by_step_and_differ_between_steps() -> None:
    method = RLAR(("a", "b"), RLARParams(subset=3, seed=4))
    draws = [tuple(method.subset_indices(step, 8).tolist()) for step in range(20)]
    assert draws == [tuple(method.subset_indices(step, 8).tolist()) for step in range(20)]
    assert len(set(draws)) > 10
    assert all(len(set(d)) == 3 and all(0 <= i < 8 for i in d) for d in draws)


def test_subset_penalty_is_unbiased_over_all_subsets(tmp_path) -> None:
    """Samples are independent here, so the mean of the m-subset penalties is the full penalty."""
    h = harness(tmp_path, lambda_adv=1.0)
    trainer = h.trainer
    out = trainer.model(h.batch["image"])
    names = trainer.task.task_names

    def penalty(indices: list[int]) -> float:
        losses, reps = trainer._subset_forward(out, h.batch, torch.tensor(indices))
        grads = float32_representation_gradients([losses[t] for t in names], reps["bottleneck"])
        return float(rlar_penalty_from_gradients(grads)[0].detach())

    full = penalty(list(range(BATCH)))
    subsets = [penalty(list(c)) for c in itertools.combinations(range(BATCH), 2)]
    assert sum(subsets) / len(subsets) == pytest.approx(full, rel=1e-5)
    assert max(subsets) - min(subsets) > 1e-4  # the estimate does vary: the check is not vacuous


@pytest.mark.parametrize(
    "bad", [{"every": 0}, {"subset": 0}, {"every": 1.5}, {"subset": 2, "representation": "mid"}]
)
def test_bad_mode_settings_are_named(bad: dict[str, object]) -> None:
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"Parameter `{key}`"):
        RLAR(("a", "b"), RLARParams(**bad))  # type: ignore[arg-type]


def test_subset_without_a_trainer_says_what_is_missing() -> None:
    from mtlbench.api.method import StepInputs

    z = torch.randn(4, 3, requires_grad=True)
    losses = {"a": (z**2).sum(), "b": z.sum()}
    inputs = StepInputs(losses, {"a": 1.0, "b": 1.0}, [], {"bottleneck": z}, step=0)
    with pytest.raises(RuntimeError, match="subset_forward"):
        RLAR(("a", "b"), RLARParams(subset=2)).backward(inputs)


def test_the_subset_costs_no_second_run_of_the_heads(tmp_path) -> None:
    """The trainer runs the subset's heads apart in the step's forward: the heads see each sample
    once per step, and the whole batch's losses are those of one forward of the whole batch."""
    h = harness(tmp_path, subset=2, lambda_adv=0.5, seed=3)
    trainer = h.trainer
    seen: list[int] = []
    hooks = [
        head.register_forward_hook(lambda m, args, out: seen.append(args[0][0].shape[0]))
        for head in trainer.model.heads.values()
    ]
    step = 2
    subset = trainer.method.subset_for_step(step, BATCH)
    assert subset is not None and subset.tolist() == trainer.method.subset_indices(step, BATCH).tolist()
    output, split_losses, ran = trainer._forward(h.batch, subset)
    assert ran is not None and torch.equal(ran.indices, subset)
    per_head = len(trainer.model.heads)
    assert sorted(seen) == sorted([2] * per_head + [BATCH - 2] * per_head)
    for hook in hooks:
        hook.remove()
    _, whole_losses = trainer.forward_losses(h.batch)
    for name, loss in whole_losses.items():
        assert float(split_losses[name].detach()) == pytest.approx(float(loss.detach()), rel=1e-6), name
    # what the method is handed for those indices is the forward's subset, not a new run
    assert trainer._subset_forward(output, h.batch, subset, ran)[0] is ran.losses
    # on the off-steps of `every`, no subset is asked for
    lazy = harness(tmp_path, subset=2, every=2, seed=3)
    assert lazy.trainer.method.subset_for_step(1, BATCH) is None
    assert lazy.trainer.method.subset_for_step(2, BATCH) is not None


def test_another_subset_is_found_where_the_forward_put_its_samples(tmp_path) -> None:
    """The step's forward runs the batch subset-first; heads asked for other samples (by their
    index in the batch the step was given) get those samples, not whatever sits at that position."""
    from mtlbench import batch_parts

    h = harness(tmp_path, subset=2, lambda_adv=0.5, seed=3)
    trainer = h.trainer
    subset = trainer.method.subset_for_step(2, BATCH)
    assert subset is not None
    output, _, ran = trainer._forward(h.batch, subset)
    assert ran is not None and ran.order[:2].tolist() == subset.tolist()
    other = batch_parts.complement(subset, BATCH)[[1, 0]]
    losses, _ = trainer._subset_forward(output, ran.batch, other, ran)
    alone = batch_parts.take(h.batch, other)
    expected = trainer.task.compute_losses(trainer.model(alone["image"]), alone)
    for name, loss in expected.items():
        assert float(losses[name].detach()) == pytest.approx(float(loss.detach()), rel=1e-6), name
    assert any(
        float(expected[n].detach()) != pytest.approx(float(ran.losses[n].detach()), rel=1e-3)
        for n in expected
    )  # other samples: not the forward's subset again
