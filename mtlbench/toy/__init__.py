"""The two-objective toy problem of CAGrad (a plotting tool, not a task) and method paths on it."""
