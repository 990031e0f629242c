"""``mtlbench bench``: the cost of each method's training step, measured side by side."""
