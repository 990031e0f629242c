"""Leaderboards from stored runs: tables (Markdown, LaTeX, CSV, HTML), statistics and plots.

Importing this package is light (no torch, pandas or matplotlib): the CLI imports it at start.
"""
