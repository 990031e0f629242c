"""Figures generated from runs and toy problems (matplotlib is imported only when a plot is made)."""
