"""The generic folder, DDTI and TN3K readers on tiny fixtures of their exact layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlbench.errors import DataError
from mtlbench.tasks.thyroid.readers.check import check_dataset
from mtlbench.tasks.thyroid.readers.ddti import DdtiReader
from mtlbench.tasks.thyroid.readers.folder import FolderReader
from mtlbench.tasks.thyroid.readers.tn3k import Tn3kReader

from .fixtures import DDTI_CASES, SIZE, TN3K_LABELS, make_ddti, make_folder, make_tn3k


# ---------------------------------------------------------------------- folder
def test_folder_records_and_load(tmp_path: Path) -> None:
    reader = FolderReader(make_folder(tmp_path))
    records = {r.sample_id: r for r in reader.records()}
    assert {k: (r.patient_id, r.tirads, r.split) for k, r in records.items()} == {
        "a1": ("p1", 3, "train"),
        "a2": ("p1", 4, "train"),
        "b1": ("p2", 5, "test"),
    }
    image, mask = reader.load(records["a1"])
    np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / "images" / "a1.png")))
    assert mask.shape == SIZE and int(mask.sum()) == 30 and set(np.unique(mask)) == {0, 1}
    no_split = FolderReader(make_folder(tmp_path / "n", with_split=False))
    assert {r.split for r in no_split.records()} == {None}
    assert set(no_split.report.class_counts) == {"unsplit"}


@pytest.mark.parametrize(
    ("fault", "reason", "names"),
    [
        ({"bad_tirads": "6"}, "unknown_tirads", ["labels.csv line 4", "'b1'", "'6'"]),
        ({"missing_mask": True}, "missing_mask", ["b1.png", "masks"]),
    ],
)
def test_folder_faults(tmp_path: Path, fault: dict[str, object], reason: str, names: list[str]) -> None:
    root = make_folder(tmp_path, **fault)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        list(FolderReader(root).records())
    assert all(n in str(info.value) for n in names)
    reader = FolderReader(root, skip_invalid=True)
    assert [r.sample_id for r in reader.records()] == ["a1", "a2"]
    assert reader.report.skipped == {reason: 1}


def test_folder_corrupt_image_counted_by_check(tmp_path: Path) -> None:
    root = make_folder(tmp_path, corrupt_image=True)
    with pytest.raises(DataError, match=r"a2\.png: corrupt or unreadable image"):
        check_dataset(root, "folder", progress=False)
    report = check_dataset(root, "folder", progress=False, skip_invalid=True)
    assert report.total == 2 and report.skipped == {"corrupt_image": 1}
    assert report.problems[0][0].endswith("a2.png")


# ---------------------------------------------------------------------- DDTI
def test_ddti_records_keep_raw_grade_and_no_level(tmp_path: Path) -> None:
    reader = DdtiReader(make_ddti(tmp_path))
    records = {r.sample_id: r for r in reader.records()}
    assert set(records) == {"1_1", "2_1", "2_2"}
    assert {k: (r.patient_id, r.tirads_raw, r.tirads) for k, r in records.items()} == {
        "1_1": ("1", "4a", None),
        "2_1": ("2", "2", None),
        "2_2": ("2", "2", None),
    }
    assert dict(reader.report.class_counts["unsplit"]) == {"tirads:4a": 1, "tirads:2": 2}
    mapped = DdtiReader(tmp_path, tirads_map={"2": 2, "3": 3, "4a": 4, "4b": 4, "4c": 5, "5": 5})
    assert {r.sample_id: r.tirads for r in mapped.records()} == {"1_1": 4, "2_1": 2, "2_2": 2}
    with pytest.raises(DataError, match="tirads_map entry '4d'"):
        DdtiReader(tmp_path, tirads_map={"4d": 4})


def test_ddti_polygons_are_rasterised_as_a_union(tmp_path: Path) -> None:
    reader = DdtiReader(make_ddti(tmp_path))
    records = {r.sample_id: r for r in reader.records()}
    _, mask = reader.load(records["1_1"])
    expected = np.zeros(SIZE, dtype=np.uint8)
    expected[2:7, 2:10] = 1  # rectangle (2,2)-(9,6), outline included
    np.testing.assert_array_equal(mask, expected)
    image, mask = reader.load(records["2_2"])
    assert image.shape == mask.shape == SIZE
    assert mask[0, 0] == 1 and mask[9, 12] == 1 and mask[5, 6] == 0  # two polygons, nothing between
    assert int(mask[8:12, 10:15].sum()) == 20


@pytest.mark.parametrize(
    ("fault", "reason", "names", "left"),
    [
        ({"bad_tirads": "7"}, "unknown_tirads", ["1.xml", "'7'"], 2),
        ({"missing_image": True}, "missing_image", ["2.xml", "2_2.jpg"], 2),
        ({"orphan_image": True}, "missing_mask", ["1_7.jpg"], 3),
    ],
)
def test_ddti_faults(
    tmp_path: Path, fault: dict[str, object], reason: str, names: list[str], left: int
) -> None:
    root = make_ddti(tmp_path, **fault)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        list(DdtiReader(root).records())
    assert all(n in str(info.value) for n in names)
    reader = DdtiReader(root, skip_invalid=True)
    assert len(list(reader.records())) == left and reader.report.skipped == {reason: 1}


def test_ddti_bad_polygon_named_on_load(tmp_path: Path) -> None:
    root = make_ddti(tmp_path, broken_svg=True)
    report = check_dataset(root, "ddti", progress=False, skip_invalid=True)
    assert report.total == len(DDTI_CASES) and report.skipped == {"bad_annotation": 1}
    assert report.problems[0][0].endswith("2.xml") and "image 2" in report.problems[0][1]


# ---------------------------------------------------------------------- TN3K
def test_tn3k_records_labels_and_jpeg_masks(tmp_path: Path) -> None:
    reader = Tn3kReader(make_tn3k(tmp_path))
    records = list(reader.records())
    assert [(r.sample_id, r.split, r.malignant) for r in records] == [
        ("trainval/0000", "trainval", False),
        ("trainval/0001", "trainval", True),
        ("trainval/0002", "trainval", True),
        ("test/0000", "test", True),
    ]
    assert all(r.tirads is None and r.patient_id == r.sample_id for r in records)
    assert dict(reader.report.malignancy_counts["trainval"]) == {"benign": 1, "malignant": 2}
    _, mask = reader.load(records[0])
    # JPEG ringing leaves small non-zero values; thresholding at 127 recovers the box exactly.
    assert int(mask.sum()) == 30 and mask[3:8, 4:10].all()
    n_total = sum(len(v) for v in TN3K_LABELS.values())
    assert check_dataset(tmp_path, "tn3k", progress=False).total == n_total


def test_tn3k_faults(tmp_path: Path) -> None:
    root = make_tn3k(tmp_path / "a", bad_label=True)
    with pytest.raises(DataError, match=r"label4trainval\.csv: 0002\.jpg has label '7'"):
        list(Tn3kReader(root).records())
    reader = Tn3kReader(root, skip_invalid=True)
    assert len(list(reader.records())) == 3 and reader.report.skipped == {"unknown_label": 1}
    root = make_tn3k(tmp_path / "b", missing_mask=True)
    with pytest.raises(DataError, match=r"test-image/0000\.jpg: image has no mask"):
        list(Tn3kReader(root).records())
