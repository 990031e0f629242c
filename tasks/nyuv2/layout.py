"""The on-disk layout of the preprocessed NYUv2 and Cityscapes that MTAN, LibMTL, CAGrad, Nash-MTL and
FAMO read, and a reader for one sample. Numpy only (``mtlbench data check`` imports it without torch).

Layout (``lorenmt/mtan`` ``im2im_pred/create_dataset.py``; LibMTL ``examples/nyu/create_dataset.py``
and ``examples/cityscapes/create_dataset.py``)::

    <root>/{train,val}/image/<i>.npy    (H, W, 3)  float, moved to (3, H, W) by the loaders
    <root>/{train,val}/label/<i>.npy    (H, W)     class index as a number; -1 = ignore
    <root>/{train,val}/depth/<i>.npy    (H, W, 1)  depth; 0 = no measurement (invalid pixel)
    <root>/{train,val}/normal/<i>.npy   (H, W, 3)  unit surface normal; all-zero = invalid (NYUv2 only)

with ``i`` = 0 … n−1 (the loaders count ``image/*.npy`` and open ``<i>.npy`` for every ``i`` below the
count). The loaders cast every array to float32; the segmentation loss ignores label −1 and the
metrics count only pixels whose label lies in [0, classes). NYUv2: 795 train / 654 val at 288 × 384,
13 classes. Cityscapes: 2,975 train / 500 val at 128 × 256, 7 classes, no normals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BENCHMARKS", "FOLDERS", "SPLITS", "Benchmark", "count_samples", "read_sample", "write_fixture"]

SPLITS = ("train", "val")
#: Task name → folder of its target; the image lives in ``image/``.
FOLDERS = {"seg": "label", "depth": "depth", "normal": "normal"}
IGNORE_LABEL = -1


@dataclass(frozen=True)
class Benchmark:
    name: str
    size: tuple[int, int]
    num_classes: int
    tasks: tuple[str, ...]
    official_counts: tuple[tuple[str, int], ...]

    def folders(self) -> tuple[str, ...]:
        return ("image", *(FOLDERS[t] for t in self.tasks))


BENCHMARKS = {
    "nyuv2": Benchmark("nyuv2", (288, 384), 13, ("seg", "depth", "normal"), (("train", 795), ("val", 654))),
    "cityscapes": Benchmark("cityscapes", (128, 256), 7, ("seg", "depth"), (("train", 2975), ("val", 500))),
}

#: The trailing channel axis each array has on disk (``None``: a plain (H, W) array).
CHANNELS = {"image": 3, "label": None, "depth": 1, "normal": 3}


def count_samples(root: Path, split: str) -> int:
    """How many samples a split holds, counted as the loaders do: the ``image/*.npy`` files."""
    return sum(1 for _ in (Path(root) / split / "image").glob("*.npy"))


def read_sample(root: Path, split: str, index: int, folders: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Sample ``index`` of ``split``: ``{folder: float32 array, channels first}`` (label stays (H, W))."""
    out: dict[str, np.ndarray] = {}
    for folder in folders:
        array = np.asarray(np.load(Path(root) / split / folder / f"{index}.npy"), dtype=np.float32)
        if CHANNELS[folder] is not None:
            if array.ndim == 2:  # a depth map saved without its channel axis
                array = array[..., None]
            array = np.moveaxis(array, -1, 0)
        out[folder] = array
    return out


def write_fixture(
    folder: Path,
    benchmark: str,
    counts: dict[str, int],
    size: tuple[int, int] = (32, 64),
    seed: int = 0,
) -> Path:
    """A tiny data set of the exact layout (not real scenes): for tests and the ``smoke`` preset.

    Labels are blobs of every class with some ignore pixels; depth is positive with a few zeros
    (invalid); normals are unit vectors with a few all-zero (invalid) pixels. Idempotent: a folder
    that already holds the last file is left as it is.
    """
    spec = BENCHMARKS[benchmark]
    folder = Path(folder)
    last_split = SPLITS[-1]
    last = folder / last_split / spec.folders()[-1] / f"{counts[last_split] - 1}.npy"
    if last.is_file():
        return folder
    rng = np.random.default_rng(seed)
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w]
    for split in SPLITS:
        for name in spec.folders():
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            label = ((rows // 8 + cols // 8 + i) % spec.num_classes).astype(np.float32)
            depth = (1.0 + 3.0 * rng.random((h, w, 1))).astype(np.float32)
            image = np.concatenate(
                [label[..., None] / spec.num_classes, depth / 4.0, rng.random((h, w, 1))], axis=-1
            ).astype(np.float32)
            label[rng.random((h, w)) < 0.05] = IGNORE_LABEL
            depth[rng.random((h, w)) < 0.05] = 0.0
            arrays = {"image": image, "label": label, "depth": depth}
            if "normal" in spec.tasks:
                normal = rng.normal(size=(h, w, 3)) + np.array([0.0, 0.0, 2.0])
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[rng.random((h, w)) < 0.05] = 0.0
                arrays["normal"] = normal.astype(np.float32)
            for name in spec.folders():
                np.save(folder / split / name / f"{i}.npy", arrays[name])
    return folder
