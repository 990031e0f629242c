"""ThyroidXL reader: official split, per-patient labels with either key case, faults raise or are counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlbench.errors import DataError
from mtlbench.tasks.thyroid.readers import open_reader
from mtlbench.tasks.thyroid.readers.check import check_dataset
from mtlbench.tasks.thyroid.readers.thyroidxl import ThyroidXLReader

from .fixtures import SIZE, XL_PATIENTS, make_thyroidxl


def _by_id(reader: ThyroidXLReader) -> dict[str, object]:
    return {r.sample_id: r for r in reader.records()}


def test_records_split_labels_and_key_case(tmp_path: Path) -> None:
    reader = ThyroidXLReader(make_thyroidxl(tmp_path))
    records = _by_id(reader)
    assert set(records) == {Path(n).stem for _, names, _, _ in XL_PATIENTS.values() for n in names}
    for patient, (split, names, level, conclusion) in XL_PATIENTS.items():
        for name in names:
            r = records[Path(name).stem]
            assert (r.patient_id, r.split, r.tirads) == (patient, split, level)  # type: ignore[attr-defined]
            assert r.malignant is (conclusion in (1, 2))  # type: ignore[attr-defined]
            assert r.source == "thyroidxl" and r.acr_points is None  # type: ignore[attr-defined]
    report = reader.report
    assert dict(report.class_counts["train"]) == {"TR4": 2, "TR5": 1}
    assert dict(report.class_counts["test"]) == {"TR2": 1}
    assert dict(report.malignancy_counts["train"]) == {"benign": 2, "malignant": 1}
    assert report.problems == [] and report.total_skipped == 0


def test_load_reads_pixels_and_binarises_any_positive_value(tmp_path: Path) -> None:
    root = make_thyroidxl(tmp_path)
    reader = ThyroidXLReader(root)
    records = _by_id(reader)
    for sample_id in ("00000058_15BFD5CD_0", "00000058_15BFD5CD_1"):  # mask values 255 and 1
        record = records[sample_id]
        image, mask = reader.load(record)  # type: ignore[arg-type]
        expected = np.asarray(Image.open(root / "train" / "images" / f"{sample_id}.png"))
        assert image.dtype == np.uint8 and image.shape == SIZE
        np.testing.assert_array_equal(image, expected)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert int(mask.sum()) == 5 * 6 and mask[3:8, 4:10].all()


def test_null_nodule_is_unlabelled_and_coco_info_is_a_fallback(tmp_path: Path) -> None:
    reader = ThyroidXLReader(make_thyroidxl(tmp_path / "a", null_nodule=True))
    records = _by_id(reader)
    assert records["00000300_11111111_0"].tirads is None  # type: ignore[attr-defined]
    assert reader.report.class_counts["train"]["unlabelled"] == 1
    coco = _by_id(ThyroidXLReader(make_thyroidxl(tmp_path / "b", coco_info_only=True)))
    assert {k: (r.tirads, r.malignant) for k, r in coco.items()} == {  # type: ignore[attr-defined]
        k: (r.tirads, r.malignant) for k, r in _by_id(ThyroidXLReader(tmp_path / "a")).items() if k in coco
    }


@pytest.mark.parametrize(
    ("fault", "reason", "names"),
    [
        ({"missing_mask": True}, "missing_mask", ["00000200_DEADBEEF_0.png"]),
        ({"bad_tirads": 7}, "unknown_tirads", ["id2info_eng.json", "00000200", "7"]),
        ({"bad_tirads": "TR6"}, "unknown_tirads", ["id2info_eng.json", "TR6"]),
        (
            {"patient_in_both": True},
            "patient_in_both_splits",
            ["train_patients.txt", "test_patients.txt", "00000101"],
        ),
        ({"patient_missing": True}, "patient_missing", ["id2info_eng.json", "00000200"]),
    ],
)
def test_metadata_faults_raise_or_are_counted(
    tmp_path: Path, fault: dict[str, object], reason: str, names: list[str]
) -> None:
    root = make_thyroidxl(tmp_path, **fault)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        list(ThyroidXLReader(root).records())
    for name in names:
        assert name in str(info.value)
    reader = ThyroidXLReader(root, skip_invalid=True)
    records = list(reader.records())
    assert len(records) == 3 and reader.report.skipped == {reason: 1}
    assert len(reader.report.problems) == 1 and all(n in "".join(reader.report.problems[0]) for n in names)


@pytest.mark.parametrize(
    ("fault", "reason", "names"),
    [
        ({"corrupt_image": True}, "corrupt_image", ["00000058_15BFD5CD_0.png"]),
        ({"size_mismatch": True}, "size_mismatch", ["00000101_0A1B2C3D_0.png", "10x16", "12x16"]),
    ],
)
def test_decoding_faults_raise_on_load_or_are_counted_by_check(
    tmp_path: Path, fault: dict[str, object], reason: str, names: list[str]
) -> None:
    root = make_thyroidxl(tmp_path, **fault)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        check_dataset(root, "thyroidxl", progress=False)
    assert all(n in str(info.value) for n in names)
    report = check_dataset(root, "thyroidxl", progress=False, skip_invalid=True)
    assert report.skipped == {reason: 1} and report.total == 3
    file, message = report.problems[0]
    assert all(n in file + message for n in names)


def test_open_reader_passes_options(tmp_path: Path) -> None:
    reader = open_reader(make_thyroidxl(tmp_path), "thyroidxl", splits=("test",))
    assert [r.split for r in reader.records()] == ["test"]
    with pytest.raises(DataError, match="'val'"):
        open_reader(tmp_path, "thyroidxl", splits=("val",))
