"""Builders of tiny fake thyroid data sets with the exact on-disk schema of ``spec/data.md``.

Every builder writes into a fresh folder (pytest's ``tmp_path``), draws pixels from a seeded generator and
can inject one fault at a time (a corrupt file, a size mismatch, a missing mask, a bad label, ...). The
expected contents are module constants, so tests assert against them rather than re-deriving them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

# Bound at import so that tests which replace ``h5py.File`` with a spy still build real files.
_H5File = h5py.File

SIZE = (12, 16)  # (H, W) of the file-based fixtures


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=size, dtype=np.uint8)


def _mask(
    size: tuple[int, int] = SIZE, value: int = 255, box: tuple[int, int, int, int] = (3, 4, 8, 10)
) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = value
    return mask


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------- ThyroidXL
#: patient -> (official split, image file names, TI-RADS level, conclusion)
XL_PATIENTS: dict[str, tuple[str, tuple[str, ...], int, int]] = {
    "00000058": ("train", ("00000058_15BFD5CD_0.png", "00000058_15BFD5CD_1.png"), 4, 3),
    "00000101": ("train", ("00000101_0A1B2C3D_0.png",), 5, 1),
    "00000200": ("test", ("00000200_DEADBEEF_0.png",), 2, 4),
}


def make_thyroidxl(
    root: Path,
    *,
    seed: int = 0,
    corrupt_image: bool = False,
    size_mismatch: bool = False,
    missing_mask: bool = False,
    bad_tirads: object = None,
    patient_in_both: bool = False,
    patient_missing: bool = False,
    null_nodule: bool = False,
    coco_info_only: bool = False,
) -> Path:
    """A ThyroidXL tree. Patient 58 writes ``TIRADS``/``Position``, 101 and 200 ``tirads``/``position``.

    Faults: ``corrupt_image`` (58's first PNG is garbage), ``size_mismatch`` (101's mask is 2 rows short),
    ``missing_mask`` (200's mask deleted), ``bad_tirads`` (200's TI-RADS becomes that value),
    ``patient_in_both`` (101 also in the test list), ``patient_missing`` (200 dropped from the JSON),
    ``null_nodule`` (extra train patient 00000300 with ``nodule_1: null``), ``coco_info_only`` (no
    id2info_eng.json; the labels are in the COCO files' per-patient ``info``).
    """
    rng = _rng(seed)
    info: dict[str, dict[str, object]] = {}
    patients = dict(XL_PATIENTS)
    if null_nodule:
        patients["00000300"] = ("train", ("00000300_11111111_0.png",), 0, 4)
    for patient, (split, names, level, conclusion) in patients.items():
        for k, name in enumerate(names):
            _save(root / split / "images" / name, _image(rng))
            # 58's second mask uses foreground value 1: any value > 0 counts.
            value = 1 if (patient == "00000058" and k == 1) else 255
            mask_size = (SIZE[0] - 2, SIZE[1]) if (size_mismatch and patient == "00000101") else SIZE
            _save(root / split / "masks" / name, _mask(mask_size, value))
        if patient == "00000058":
            nodule: dict[str, object] | None = {
                "Position": "Left lobe",
                "Width": 22.0,
                "Depth": None,
                "TIRADS": level,
            }
        else:
            nodule = {"position": "Right lobe", "width": 11.0, "depth": None, "tirads": level}
        if patient == "00000200" and bad_tirads is not None:
            nodule = {"position": "Right lobe", "tirads": bad_tirads}
        if patient == "00000300":
            nodule = None
        info[patient] = {
            "age": 60,
            "gender": 2,
            "conclusion": conclusion,
            "nodule_1": nodule,
            "nodule_2": None,
            "images": list(names),
        }
    if corrupt_image:
        (root / "train" / "images" / XL_PATIENTS["00000058"][1][0]).write_bytes(b"\x89PNG not really")
    if missing_mask:
        (root / "test" / "masks" / XL_PATIENTS["00000200"][1][0]).unlink()
    if patient_missing:
        del info["00000200"]
    stats = root / "stats"
    stats.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        ids = [p for p, v in patients.items() if v[0] == split]
        if patient_in_both and split == "test":
            ids.append("00000101")
        (stats / f"{split}_patients.txt").write_text("".join(f"{p}\n" for p in ids), encoding="utf-8")
        coco = {
            "images": [
                {"id": i, "file_name": n, "height": SIZE[0], "width": SIZE[1]}
                for i, n in enumerate(n for p, v in patients.items() if v[0] == split for n in v[1])
            ],
            "annotations": [],
            "categories": [{"id": 0, "name": "benign"}, {"id": 1, "name": "malignant"}],
        }
        if coco_info_only:
            coco["info"] = {p: info[p] for p in info if patients[p][0] == split}
        (root / split / f"{split}_annotations.json").write_text(json.dumps(coco), encoding="utf-8")
    if not coco_info_only:
        (stats / "id2info_eng.json").write_text(json.dumps(info), encoding="utf-8")
    return root


# ---------------------------------------------------------------------- AIMI
AIMI_SIZE = (6, 8)
#: annot_id -> (frames, ti-rads_level, histopath_diagnosis, ACR points in ACR_COLUMNS order)
AIMI_CLIPS: dict[str, tuple[int, int, int, tuple[int, int, int, int, int]]] = {
    "129_": (5, 4, 0, (2, 2, 0, 0, 0)),
    "12_": (3, 5, 1, (2, 3, 3, 2, 3)),
    "3_": (2, 2, 0, (1, 1, 0, 0, 0)),
}
#: (annot_id, frame number) whose mask is all zero
AIMI_EMPTY = {("129_", 2), ("12_", 3)}
AIMI_COLUMNS = (
    "annot_id,age,sex,location,size_x,size_y,size_z,ti-rads_composition,ti-rads_echogenicity,ti-rads_shape,"
    "ti-rads_margin,ti-rads_echogenicfoci,ti-rads_level,histopath_diagnosis"
).split(",")


def aimi_rows() -> list[tuple[str, int]]:
    """(annot_id, frame) of each HDF5 row: clip 129_ stored in reverse frame order, to test the sort."""
    rows: list[tuple[str, int]] = []
    for annot, (frames, *_) in AIMI_CLIPS.items():
        order = range(frames, 0, -1) if annot == "129_" else range(1, frames + 1)
        rows.extend((annot, f) for f in order)
    return rows


def make_aimi(
    root: Path, *, seed: int = 0, missing_from_csv: str | None = None, bad_level: object = None
) -> Path:
    """``dataset.hdf5`` (keys annot_id S4, frame_num S3, image/mask uint8) and ``metadata.csv``.

    ``image[row, 0, 0] == row`` so a test can tell which row was read. ``missing_from_csv`` drops that
    annot_id's CSV row; ``bad_level`` replaces ``ti-rads_level`` of ``3_``.
    """
    rng = _rng(seed)
    rows = aimi_rows()
    n = len(rows)
    images = rng.integers(0, 256, size=(n, *AIMI_SIZE), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n, dtype=np.uint8)
    masks = np.zeros((n, *AIMI_SIZE), dtype=np.uint8)
    for i, key in enumerate(rows):
        if key not in AIMI_EMPTY:
            masks[i, 1:4, 2:6] = 255
    root.mkdir(parents=True, exist_ok=True)
    with _H5File(root / "dataset.hdf5", "w") as f:
        f.create_dataset("annot_id", data=np.array([a.encode() for a, _ in rows], dtype="S4"))
        f.create_dataset("frame_num", data=np.array([str(fr).encode() for _, fr in rows], dtype="S3"))
        f.create_dataset("image", data=images, chunks=(1, *AIMI_SIZE))
        f.create_dataset("mask", data=masks, chunks=(1, *AIMI_SIZE))
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(AIMI_COLUMNS)
        for annot, (_, level, diagnosis, points) in AIMI_CLIPS.items():
            if annot == missing_from_csv:
                continue
            if annot == "3_" and bad_level is not None:
                level = bad_level  # type: ignore[assignment]
            writer.writerow([annot, 55, "F", "right", 1.2, 0.8, 1.0, *points, level, diagnosis])
    return root


# ---------------------------------------------------------------------- generic folder
#: id -> (patient, tirads cell, split cell)
FOLDER_ROWS = {"a1": ("p1", "3", "train"), "a2": ("p1", "TR4", "train"), "b1": ("p2", "5", "test")}


def make_folder(
    root: Path,
    *,
    seed: int = 0,
    bad_tirads: str | None = None,
    missing_mask: bool = False,
    corrupt_image: bool = False,
    with_split: bool = True,
) -> Path:
    """``images/*.png``, ``masks/*.png``, ``labels.csv`` (id, patient, tirads[, split])."""
    rng = _rng(seed)
    for sample in FOLDER_ROWS:
        _save(root / "images" / f"{sample}.png", _image(rng))
        if not (missing_mask and sample == "b1"):
            _save(root / "masks" / f"{sample}.png", _mask())
    if corrupt_image:
        (root / "images" / "a2.png").write_bytes(b"garbage")
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "patient", "tirads", *(["split"] if with_split else [])])
        for sample, (patient, tirads, split) in FOLDER_ROWS.items():
            if bad_tirads is not None and sample == "b1":
                tirads = bad_tirads
            writer.writerow([sample, patient, tirads, *([split] if with_split else [])])
    return root


# ---------------------------------------------------------------------- DDTI
#: case -> (tirads text, image number -> polygons as [(x, y), ...])
DDTI_CASES: dict[str, tuple[str, dict[int, list[list[tuple[int, int]]]]]] = {
    "1": ("4a", {1: [[(2, 2), (9, 2), (9, 6), (2, 6)]]}),
    "2": (
        "2",
        {
            1: [[(1, 1), (5, 1), (5, 4), (1, 4)]],
            2: [[(0, 0), (3, 0), (3, 3)], [(10, 8), (14, 8), (14, 11), (10, 11)]],
        },
    ),
}


def make_ddti(
    root: Path,
    *,
    seed: int = 0,
    bad_tirads: str | None = None,
    missing_image: bool = False,
    orphan_image: bool = False,
    broken_svg: bool = False,
) -> Path:
    """Case XMLs (``<mark><image>idx</image><svg>[JSON polygons]</svg></mark>``) and ``{case}_{idx}.jpg``."""
    rng = _rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for case, (tirads, marks) in DDTI_CASES.items():
        if bad_tirads is not None and case == "1":
            tirads = bad_tirads
        parts = [
            f"<case><number>{case}</number><age>49</age><sex>F</sex><composition>solid</composition>",
            f"<tirads>{tirads}</tirads><reportbacaf></reportbacaf><reporteco></reporteco>",
        ]
        for number, polygons in marks.items():
            svg = json.dumps(
                [
                    {
                        "points": [{"x": x, "y": y} for x, y in poly],
                        "annotation": {},
                        "regionType": "freehand",
                    }
                    for poly in polygons
                ]
            )
            if broken_svg and case == "2" and number == 2:
                svg = '[{"points": [{"x": 1, "y": 1}]}]'
            parts.append(f"<mark><image>{number}</image><svg>{svg}</svg></mark>")
            if not (missing_image and case == "2" and number == 2):
                _save(root / f"{case}_{number}.jpg", _image(rng))
        parts.append("</case>")
        (root / f"{case}.xml").write_text("\n".join(parts), encoding="utf-8")
    if orphan_image:
        _save(root / "1_7.jpg", _image(rng))
    return root


# ---------------------------------------------------------------------- TN3K
#: split -> {file name: label}
TN3K_LABELS = {"trainval": {"0000.jpg": 0, "0001.jpg": 1, "0002.jpg": 1}, "test": {"0000.jpg": 1}}


def make_tn3k(root: Path, *, seed: int = 0, bad_label: bool = False, missing_mask: bool = False) -> Path:
    """``{trainval,test}-{image,mask}/NNNN.jpg`` and ``label4trainval.csv``/``label4test.csv`` (no header)."""
    rng = _rng(seed)
    for split, labels in TN3K_LABELS.items():
        (root / f"{split}-mask").mkdir(parents=True, exist_ok=True)
        for name in labels:
            _save(root / f"{split}-image" / name, _image(rng))
            if not (missing_mask and split == "test"):
                _save(root / f"{split}-mask" / name, _mask())
        lines = [
            f"{n},{'7' if (bad_label and split == 'trainval' and n == '0002.jpg') else v}"
            for n, v in labels.items()
        ]
        (root / f"label4{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
