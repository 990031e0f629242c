"""Optuna hyper-parameter studies over mtlbench runs (``mtlbench tune``); see :mod:`mtlbench.tune.study`."""
