"""A real-data run end to end on tiny fixtures of the exact schema: folds, cache, external set."""

from __future__ import annotations

import json

from mtlbench.config import resolve_config
from mtlbench.runner import run_experiment
from tests.tasks.thyroid.readers.fixtures import make_aimi, make_thyroidxl
from tests.tiny import tiny_run_overrides


def test_aimi_with_thyroidxl_as_external_set(tmp_path) -> None:
    aimi = make_aimi(tmp_path / "aimi")
    xl = make_thyroidxl(tmp_path / "xl")
    overrides = tiny_run_overrides(
        tmp_path,
        **{
            "train.epochs": 1,
            "data.root": aimi,
            "data.format": "aimi",
            "data.reader_options.empty_masks": "keep",
            "data.folds": 3,
            "data.fold": 1,
            "data.augment": "true",
            "data.external_root": xl,
            "data.external_format": "thyroidxl",
        },
    )
    outcome = run_experiment(resolve_config(overrides, method="rlar"))
    result = outcome.result
    assert set(result["metrics"]) == {"val", "external"}  # AIMI has no official test split
    info = result["data"]
    assert info["folds"] == 3 and info["fold"] == 1 and info["format"] == "aimi"
    assert info["external"]["format"] == "thyroidxl"
    folds = json.loads(open(info["folds_file"]).read())
    assert folds  # saved with the data, reused by every method
    for split in ("val", "external"):
        assert 0.0 <= result["metrics"][split]["dice"] <= 1.0
    # a second method gets the same folds file
    other = run_experiment(resolve_config(overrides, method="vanilla")).result["data"]
    assert other["folds_file"] == info["folds_file"]
