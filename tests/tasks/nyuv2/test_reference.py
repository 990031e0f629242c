"""The shipped reference rows are well formed, sourced and comparable with mtlbench's metrics."""

from __future__ import annotations

from mtlbench.registry import list_methods
from mtlbench.tasks.nyuv2.reference import METRIC_KEYS, PERCENT_KEYS, read_reference_results


def test_every_row_is_sourced_and_in_range() -> None:
    rows = read_reference_results()
    assert len(rows) == 41
    methods = set(list_methods())
    for row in rows:
        assert row["source"].startswith("LibMTL repository, examples/nyu/results/"), row
        assert row["kind"] in ("LibMTL run", "quoted by LibMTL") and row["architecture"]
        assert row["method"] == "" or row["method"] in methods, row["method"]
        values = {k: row[k] for k in METRIC_KEYS}
        assert all(v is not None for v in values.values()), row
        assert all(0 < values[k] < 100 for k in PERCENT_KEYS), row
        assert 0 < values["abs_err"] < 1 and 0 < values["rel_err"] < 1
        assert 0 < values["angle_median"] < values["angle_mean"] < 90
        assert values["within_11_25"] < values["within_22_5"] < values["within_30"]


def test_a_row_checked_by_hand() -> None:
    """LibMTL resnet_results.pdf Table 2 (HPS), row Nash-MTL."""
    (row,) = [
        r for r in read_reference_results() if r["source_label"] == "Nash-MTL" and "resnet" in r["source"]
    ]
    assert row["method"] == "nash_mtl" and row["batch_size"] == "8" and row["epochs"] == "200"
    expected = (53.38, 75.01, 0.3814, 0.1570, 22.61, 15.87, 37.30, 63.68, 74.28)
    assert tuple(row[k] for k in METRIC_KEYS) == expected
