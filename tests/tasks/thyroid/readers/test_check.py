"""open_reader's errors, the registry, and the data-set check with its printed report."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlbench.errors import DataError
from mtlbench.tasks.thyroid.readers import READERS, ThyroidReader, open_reader
from mtlbench.tasks.thyroid.readers.check import check_dataset, format_report

from .fixtures import make_aimi, make_ddti, make_folder, make_thyroidxl, make_tn3k

BUILDERS = {
    "thyroidxl": make_thyroidxl,
    "aimi": make_aimi,
    "folder": make_folder,
    "ddti": make_ddti,
    "tn3k": make_tn3k,
}


def test_every_registered_reader_has_a_fixture() -> None:
    assert set(READERS) == set(BUILDERS)


@pytest.mark.parametrize("format", sorted(BUILDERS))
def test_reader_contract(tmp_path: Path, format: str) -> None:
    reader = open_reader(BUILDERS[format](tmp_path), format)
    assert isinstance(reader, ThyroidReader) and reader.name == format
    records = list(reader.records())
    assert records and len({r.sample_id for r in records}) == len(records)
    image, mask = reader.load(records[-1])
    assert image.dtype == mask.dtype == "uint8" and image.shape == mask.shape and image.ndim == 2
    assert set(mask.ravel().tolist()) <= {0, 1} and mask.any()
    assert reader.report.total == len(records)


def test_open_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root '/no/such/dir' does not exist"):
        open_reader("/no/such/dir", "thyroidxl")
    with pytest.raises(DataError, match="unknown data format 'png'.*thyroidxl, aimi, folder, ddti, tn3k"):
        open_reader(tmp_path, "png")
    with pytest.raises(DataError, match="unknown option 'empty_mask' .*empty_masks"):
        open_reader(tmp_path, "aimi", empty_mask="skip")
    with pytest.raises(DataError, match="stats/train_patients.txt: missing patient list"):
        list(open_reader(tmp_path, "thyroidxl").records())


def test_check_and_format_report(tmp_path: Path) -> None:
    root = make_thyroidxl(tmp_path, missing_mask=True, corrupt_image=True)
    report = check_dataset(root, "thyroidxl", progress=True, skip_invalid=True)
    assert report.total == 2 and report.skipped == {"missing_mask": 1, "corrupt_image": 1}
    text = format_report(report)
    assert "2 samples read, 2 skipped" in text
    assert "missing_mask: 1" in text and "corrupt_image: 1" in text
    assert "00000200_DEADBEEF_0.png" in text and "00000058_15BFD5CD_0.png" in text
    assert "train" in text and "TR4" in text
    assert report.to_dict()["class_counts"] == {"train": {"TR4": 1, "TR5": 1}}
