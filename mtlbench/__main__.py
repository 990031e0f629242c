"""``python -m mtlbench`` (and ``torchrun -m mtlbench run …``): the ``mtlbench`` command."""

from mtlbench.cli import main

main()
