"""Cross-validation: one run per fold on identical folds, then mean ± std per split."""

from __future__ import annotations

import json
import math

import pytest

from mtlbench.config import ConfigError, resolve_config
from mtlbench.cv import mean_std, run_cv
from mtlbench.results import read_index
from tests.tiny import tiny_run_overrides


def test_mean_and_sample_std() -> None:
    assert mean_std([0.5, 0.7, 0.6]) == pytest.approx({"mean": 0.6, "std": 0.1, "n": 3})
    assert mean_std([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert math.isnan(mean_std([])["mean"])


def test_cv_runs_each_fold_and_summarises(tmp_path) -> None:
    overrides = tiny_run_overrides(tmp_path, **{"train.epochs": 1, "data.num_external": 4})
    cfg = resolve_config(overrides, method="vanilla")
    outcome = run_cv(cfg, folds=2)
    assert len(outcome.folds) == 2
    infos = [o.result["data"] for o in outcome.folds]
    assert [i["fold"] for i in infos] == [0, 1] and infos[0]["folds_file"] == infos[1]["folds_file"]
    summary = json.loads(outcome.path.read_text())
    for split in ("val", "test", "external"):
        assert summary["metrics"][split]["dice"]["n"] == 2
    kinds = {r.get("kind", "run") for r in read_index(tmp_path / "runs")}
    assert kinds == {"run", "cv"}
    again = run_cv(cfg, folds=2)  # finished folds are reused, not retrained
    assert all(o.already_finished for o in again.folds)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        run_cv(cfg, folds=1)
