"""Multitask methods, one file each, found by :mod:`mtlbench.discovery` and imported when named.

The interface they implement lives in the core: :mod:`mtlbench.api`.
"""
