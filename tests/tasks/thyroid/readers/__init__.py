"""Tests of the thyroid data-set readers."""
