"""AIMI reader: the CSV join, empty masks, frame stride, and that the HDF5 file is read frame by frame."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import pytest

from mtlbench.errors import DataError
from mtlbench.tasks.thyroid.readers.aimi import AimiReader
from mtlbench.tasks.thyroid.readers.check import check_dataset

from .fixtures import AIMI_CLIPS, AIMI_EMPTY, AIMI_SIZE, aimi_rows, make_aimi

N_FRAMES = sum(c[0] for c in AIMI_CLIPS.values())


class _SpyDataset:
    def __init__(self, dataset: Any, key: str, log: list[tuple[str, Any]]) -> None:
        self._dataset, self._key, self._log = dataset, key, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def __getitem__(self, selection: Any) -> Any:
        self._log.append((self._key, selection))
        return self._dataset[selection]


class _SpyFile:
    """Stands in for ``h5py.File``: records every pixel read as (key, selection)."""

    log: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, path: Any, mode: str = "r") -> None:
        self._file = _REAL_FILE(path, mode)

    def __contains__(self, key: str) -> bool:
        return key in self._file

    def __getitem__(self, key: str) -> _SpyDataset:
        return _SpyDataset(self._file[key], key, self.log)

    def close(self) -> None:
        self._file.close()


_REAL_FILE = h5py.File


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    _SpyFile.log = []
    monkeypatch.setattr(h5py, "File", _SpyFile)
    return _SpyFile.log


def test_fixture_has_the_exact_schema(tmp_path: Path) -> None:
    root = make_aimi(tmp_path)
    with h5py.File(root / "dataset.hdf5", "r") as f:
        assert f["annot_id"].dtype == np.dtype("S4") and f["frame_num"].dtype == np.dtype("S3")
        assert f["image"].dtype == np.uint8 and f["image"].shape == (N_FRAMES, *AIMI_SIZE)
        assert set(np.unique(f["mask"][()])) == {0, 255}
        assert f["annot_id"][0] == b"129_"


def test_records_keep_join_and_order(tmp_path: Path, spy: list[tuple[str, Any]]) -> None:
    reader = AimiReader(make_aimi(tmp_path), empty_masks="keep")
    records = list(reader.records())
    assert len(records) == N_FRAMES
    assert [r.sample_id for r in records[:5]] == [f"129_{f:04d}" for f in range(1, 6)]  # sorted by frame_num
    rows = aimi_rows()
    for r in records:
        annot, frame = rows[r.index]
        _, level, diagnosis, points = AIMI_CLIPS[annot]
        assert r.sample_id == f"{annot}{frame:04d}" and r.patient_id == annot and r.split is None
        assert (r.tirads, r.malignant, r.size) == (level, bool(diagnosis), AIMI_SIZE)
        assert list(r.acr_points.values()) == list(points)  # type: ignore[union-attr]
        assert set(r.acr_points) == {"composition", "echogenicity", "shape", "margin", "echogenic_foci"}  # type: ignore[arg-type]
    assert dict(reader.report.class_counts["unsplit"]) == {"TR4": 5, "TR5": 3, "TR2": 2}
    # Listing read the two small id datasets and never a pixel of 'image' or 'mask'.
    assert {key for key, _ in spy} == {"annot_id", "frame_num"}


def test_load_reads_exactly_one_frame(tmp_path: Path, spy: list[tuple[str, Any]]) -> None:
    reader = AimiReader(make_aimi(tmp_path), empty_masks="keep")
    record = list(reader.records())[6]
    spy.clear()
    image, mask = reader.load(record)
    assert spy == [("image", record.index), ("mask", record.index)]
    assert image.shape == AIMI_SIZE and image.dtype == np.uint8 and image[0, 0] == record.index
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


def test_empty_masks_skip_and_keep_are_counted(tmp_path: Path, spy: list[tuple[str, Any]]) -> None:
    root = make_aimi(tmp_path)
    skip = AimiReader(root, empty_masks="skip", scan_block=3)
    kept_ids = {r.sample_id for r in skip.records()}
    assert len(kept_ids) == N_FRAMES - len(AIMI_EMPTY)
    assert not {f"{a}{f:04d}" for a, f in AIMI_EMPTY} & kept_ids
    assert skip.report.skipped == {"empty_mask": len(AIMI_EMPTY)}
    assert "image" not in {key for key, _ in spy}  # the scan reads masks only
    report = check_dataset(root, "aimi", progress=False, empty_masks="keep")
    assert report.total == N_FRAMES and report.notes["empty_masks"] == len(AIMI_EMPTY)


def test_frame_stride_per_clip(tmp_path: Path) -> None:
    reader = AimiReader(make_aimi(tmp_path), empty_masks="keep", frame_stride=2)
    ids = [r.sample_id for r in reader.records()]
    assert ids == ["129_0001", "129_0003", "129_0005", "12_0001", "12_0003", "3_0001"]
    assert reader.report.notes["frames_strided_out"] == N_FRAMES - 6
    skip = AimiReader(tmp_path, empty_masks="skip", frame_stride=2)
    assert [r.sample_id for r in skip.records()] == [i for i in ids if i != "12_0003"]
    with pytest.raises(DataError, match="frame_stride"):
        AimiReader(tmp_path, frame_stride=0)


def test_annot_id_missing_from_csv(tmp_path: Path) -> None:
    root = make_aimi(tmp_path, missing_from_csv="12_")
    with pytest.raises(DataError, match=r"metadata\.csv.*'12_'.*trailing underscore"):
        list(AimiReader(root).records())
    reader = AimiReader(root, skip_invalid=True, empty_masks="keep")
    assert len(list(reader.records())) == N_FRAMES - 3
    assert reader.report.skipped == {"annot_id_missing_from_csv": 3}
    assert "'12_'" in reader.report.problems[0][1]


@pytest.mark.parametrize("level", [9, 0])
def test_unknown_tirads_level(tmp_path: Path, level: int) -> None:
    root = make_aimi(tmp_path, bad_level=level)
    with pytest.raises(DataError, match=rf"metadata\.csv: annot_id '3_' has ti-rads_level {level}"):
        list(AimiReader(root).records())
    reader = AimiReader(root, skip_invalid=True, empty_masks="keep")
    assert len(list(reader.records())) == N_FRAMES - 2 and reader.report.skipped == {"unknown_tirads": 2}


def test_missing_column_and_key_are_named(tmp_path: Path) -> None:
    root = make_aimi(tmp_path)
    text = (root / "metadata.csv").read_text().replace("ti-rads_level", "tirads_level")
    (root / "metadata.csv").write_text(text)
    with pytest.raises(DataError, match="missing column.*ti-rads_level"):
        list(AimiReader(root).records())
    with h5py.File(root / "dataset.hdf5", "a") as f:
        del f["frame_num"]
    with pytest.raises(DataError, match="dataset.hdf5: missing key.*frame_num"):
        list(AimiReader(root).records())


def test_reader_survives_pickling_and_a_new_process(tmp_path: Path) -> None:
    reader = AimiReader(make_aimi(tmp_path), empty_masks="keep")
    record = next(iter(reader.records()))
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.load(record)[0], reader.load(record)[0])
    reader._pid = -1  # as in a forked DataLoader worker: the inherited handle is not reused
    old = reader._handle
    reader.load(record)
    assert reader._handle is not old
    reader.close()
    clone.close()


def test_bad_acr_points_and_diagnosis_are_named(tmp_path: Path) -> None:
    root = make_aimi(tmp_path)
    lines = (root / "metadata.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[7], cells[-1] = "x", "2"  # ti-rads_composition, histopath_diagnosis of 129_
    (root / "metadata.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="annot_id '129_' has histopath_diagnosis 2"):
        list(AimiReader(root, empty_masks="keep").records())
    cells[-1] = "1"
    (root / "metadata.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    reader = AimiReader(root, empty_masks="keep", skip_invalid=True)
    assert len(list(reader.records())) == N_FRAMES - 5
    assert reader.report.skipped == {"bad_ti-rads_composition": 5}
    assert "ti-rads_composition 'x'" in reader.report.problems[0][1]


def test_dataloader_workers_each_open_their_own_handle(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, Dataset

    reader = AimiReader(make_aimi(tmp_path), empty_masks="keep")
    records = list(reader.records())  # the parent now holds an open handle, inherited by forked workers

    class Frames(Dataset):
        def __len__(self) -> int:
            return len(records)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(reader.load(records[i])[0])

    loader = DataLoader(Frames(), batch_size=2, num_workers=2, multiprocessing_context="fork")
    corners = torch.cat([batch[:, 0, 0] for batch in loader]).tolist()
    assert corners == [r.index for r in records]
    reader.close()
