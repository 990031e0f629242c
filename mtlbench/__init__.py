"""mtlbench: multitask optimisation benchmarks for medical imaging.

Kept free of heavy imports so that ``mtlbench --help`` stays fast.
"""

__version__ = "0.1.0"
