"""The contracts that plugins implement: everything a new method, task or backbone imports.

- methods: :class:`MultiTaskMethod` (owns the backward pass of one step, given :class:`StepInputs`),
  :class:`GradientCombination` (a matrix → vector aggregation of the T×P task-gradient matrix, given
  an explicit :class:`StepContext`), :class:`GramianWeighting` (task weights from G Gᵀ; the update is
  wᵀG), :func:`check_param` / :func:`check_tasks` (validated, named parameter errors), the exact
  simplex solvers of :mod:`mtlbench.api.simplex`;
- tasks: :class:`TaskDefinition`, :class:`DataSplits`, :class:`Evaluator`, :class:`ModelOutput`;
- backbones: :class:`Backbone`, :class:`FeatureContract`;
- the registration decorators.

The core depends on these interfaces only, never on a built-in plugin module.
"""

from mtlbench.api.checks import check_param, check_tasks
from mtlbench.api.gradients import (
    GradientCombination,
    StepContext,
    assign_flat_grad,
    combine_rows,
    flat_grads,
    gram_cosines,
    gram_matrix,
    pairwise_cosines,
    step_generator,
    task_gradient_matrix,
)
from mtlbench.api.method import (
    MethodNeeds,
    MultiTaskMethod,
    NoParams,
    StepInputs,
    check_finite_losses,
    detach_float,
    gradient_norms,
)
from mtlbench.api.simplex import SimplexSolution, min_norm_point
from mtlbench.api.task import DataConfig, DataSplits, Evaluator, TaskDefinition
from mtlbench.api.weighting import GramianWeighting, normalised_gram, weight_logs
from mtlbench.backbones.contract import Backbone, FeatureContract, FeatureLevel
from mtlbench.backbones.pretrained import apply_pretrained
from mtlbench.errors import ConfigError, DataError
from mtlbench.model import ModelOutput
from mtlbench.registry import register_backbone, register_method, register_task

__all__ = [
    "Backbone",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSplits",
    "Evaluator",
    "FeatureContract",
    "FeatureLevel",
    "GradientCombination",
    "GramianWeighting",
    "MethodNeeds",
    "ModelOutput",
    "MultiTaskMethod",
    "NoParams",
    "SimplexSolution",
    "StepContext",
    "StepInputs",
    "TaskDefinition",
    "apply_pretrained",
    "assign_flat_grad",
    "check_finite_losses",
    "check_param",
    "check_tasks",
    "combine_rows",
    "detach_float",
    "flat_grads",
    "gradient_norms",
    "gram_cosines",
    "gram_matrix",
    "min_norm_point",
    "normalised_gram",
    "pairwise_cosines",
    "register_backbone",
    "register_method",
    "register_task",
    "step_generator",
    "task_gradient_matrix",
    "weight_logs",
]
