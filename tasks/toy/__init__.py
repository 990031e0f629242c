"""The two-objective toy problem of CAGrad (Liu et al. 2021, Fig. 1): formula, task entry, trajectories."""
