"""The 13 radiomics targets of the thyroid task (:func:`compute_features`) on phantom scans.

Times the features of four 256 px phantom scans (pyradiomics shape, first-order and GLCM plus the
scipy/scikit-image edge and shape features); the extractor is built in the warm-up round. The values
are checked against what can be computed directly from the pixels: the mean grey level inside the
mask, the bounding box's depth-to-width ratio, a circularity of a compact shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mtlbench.tasks.thyroid.phantom import PhantomConfig, PhantomSet, generate_phantom
from mtlbench.tasks.thyroid.radiomics import FEATURE_NAMES, compute_features

SCANS = 4
SIZE = 256


@pytest.fixture(scope="module")
def phantom() -> PhantomSet:
    return generate_phantom(SCANS, PhantomConfig(size=SIZE, seed=0))


def features_of(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.stack([compute_features(image, mask) for image, mask in zip(images, masks)])


@pytest.mark.benchmark(group="radiomics")
def test_radiomics_features(benchmark: Any, phantom: PhantomSet) -> None:
    out = benchmark.pedantic(features_of, args=(phantom.images, phantom.masks), rounds=10, warmup_rounds=1)
    assert out.shape == (SCANS, len(FEATURE_NAMES)) and np.isfinite(out).all()
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for row, image, mask in zip(out, phantom.images, phantom.masks):
        inside = mask > 0
        assert row[index["firstorder_mean"]] == pytest.approx(image[inside].astype(np.float64).mean())
        rows, cols = np.nonzero(inside)
        depth, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert row[index["aspect_ratio"]] == pytest.approx(depth / width)
        assert 0.2 < row[index["circularity"]] < 1.2
        assert row[index["ellipticity"]] == pytest.approx(1 - row[index["elongation"]], abs=1e-6)
