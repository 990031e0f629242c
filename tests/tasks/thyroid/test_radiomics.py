"""The 13 thyroid radiomics targets: pyradiomics parity, known answers, degenerate masks, batching."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from mtlbench.tasks.thyroid.radiomics import (
    EDGE_RING_WIDTH,
    FEATURE_NAMES,
    PYRADIOMICS_FEATURES,
    PYRADIOMICS_SETTINGS,
    aspect_ratio,
    circularity,
    compute_features,
    compute_features_batch,
    edge_intensity_contrast,
    edge_sharpness,
    ellipticity,
)

INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

# The settings and feature mapping the module documents, spelt out independently: a change there must be
# deliberate (and bump FEATURE_VERSION), so it has to be made here too.
EXPECTED_SETTINGS = {
    "binWidth": 8,
    "force2D": True,
    "force2Ddimension": 0,
    "distances": [1],
    "symmetricalGLCM": True,
    "weightingNorm": None,
    "normalize": False,
    "resampledPixelSpacing": None,
    "resegmentRange": None,
    "minimumROIDimensions": 2,
    "label": 1,
    "additionalInfo": False,
}
EXPECTED_PYRADIOMICS_FEATURES = {
    "elongation": ("shape2D", "Elongation"),
    "firstorder_mean": ("firstorder", "Mean"),
    "firstorder_entropy": ("firstorder", "Entropy"),
    "firstorder_kurtosis": ("firstorder", "Kurtosis"),
    "glcm_contrast": ("glcm", "Contrast"),
    "glcm_energy": ("glcm", "JointEnergy"),
    "glcm_correlation": ("glcm", "Correlation"),
    "glcm_imc1": ("glcm", "Imc1"),
}
PYRADIOMICS_NAMES = tuple(EXPECTED_PYRADIOMICS_FEATURES)
OWN_NAMES = tuple(name for name in FEATURE_NAMES if name not in EXPECTED_PYRADIOMICS_FEATURES)


# ------------------------------------------------------------------------------------------------- helpers
def textured_sample(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Speckle-like texture with a darker lobulated nodule; saturates at 255 in places."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.5)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    centre_row, centre_col = size / 2 + rng.uniform(-size / 10, size / 10, 2)
    angle = np.arctan2(rows - centre_row, cols - centre_col)
    radius = size / 4 * (1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi)))
    mask = np.hypot(rows - centre_row, (cols - centre_col) * rng.uniform(0.7, 1.3)) <= radius
    image = np.clip(300 * texture - 70 * mask + 20, 0, 255)
    # A cystic (anechoic) spot and echogenic foci inside the nodule: its grey levels span 0..255.
    inside = np.argwhere(ndimage.binary_erosion(mask, iterations=3))
    cyst_row, cyst_col = inside[rng.integers(len(inside))]
    image[(np.hypot(rows - cyst_row, cols - cyst_col) <= 2.5) & mask] = 0
    for row, col in inside[rng.integers(len(inside), size=4)]:
        image[row, col] = 255
    return image.astype(np.uint8), mask


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def ellipse(
    shape: tuple[int, int], centre: tuple[float, float], semi_rows: float, semi_cols: float
) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / semi_rows) ** 2 + ((cols - centre[1]) / semi_cols) ** 2 <= 1


def flat_image(shape: tuple[int, int], value: int = 100) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


@pytest.fixture(scope="module")
def reference_extractor():
    """pyradiomics' own extractor, built from the public API with the documented settings."""
    featureextractor = pytest.importorskip("radiomics.featureextractor")
    extractor = featureextractor.RadiomicsFeatureExtractor(**EXPECTED_SETTINGS)
    extractor.disableAllFeatures()
    enabled: dict[str, list[str]] = {}
    for feature_class, feature in EXPECTED_PYRADIOMICS_FEATURES.values():
        enabled.setdefault(feature_class, []).append(feature)
    extractor.enableFeaturesByName(**enabled)
    return extractor


def reference_values(extractor, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sitk = pytest.importorskip("SimpleITK")
    # float64: pyradiomics' bin edges overflow for uint8 grey levels near 255 under NumPy 2 (see module doc).
    sitk_image = sitk.GetImageFromArray(image.astype(np.float64)[np.newaxis])
    sitk_mask = sitk.GetImageFromArray(mask.astype(np.uint8)[np.newaxis])
    result = extractor.execute(sitk_image, sitk_mask)
    return np.array(
        [float(result[f"original_{cls}_{name}"]) for cls, name in EXPECTED_PYRADIOMICS_FEATURES.values()]
    )


def pick(features: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return features[[INDEX[name] for name in names]]


# --------------------------------------------------------------------------------------------- contract
def test_feature_names_are_the_h_tirads_order() -> None:
    assert FEATURE_NAMES == (
        "circularity",
        "ellipticity",
        "elongation",
        "aspect_ratio",
        "edge_sharpness",
        "edge_intensity_contrast",
        "firstorder_mean",
        "firstorder_entropy",
        "firstorder_kurtosis",
        "glcm_contrast",
        "glcm_energy",
        "glcm_correlation",
        "glcm_imc1",
    )


def test_pyradiomics_settings_and_mapping_are_the_documented_ones() -> None:
    assert dict(PYRADIOMICS_SETTINGS) == EXPECTED_SETTINGS
    assert dict(PYRADIOMICS_FEATURES) == EXPECTED_PYRADIOMICS_FEATURES


def test_output_is_float64_vector_of_13() -> None:
    image, mask = textured_sample(64, 0)
    features = compute_features(image, mask)
    assert features.shape == (13,)
    assert features.dtype == np.float64
    assert np.isfinite(features).all()


# ------------------------------------------------------------------------------------- pyradiomics parity
@pytest.mark.parametrize(("size", "seed"), [(96, 0), (96, 1), (128, 2), (80, 3)])
def test_pyradiomics_features_equal_pyradiomics_own_extractor(
    reference_extractor, size: int, seed: int
) -> None:
    image, mask = textured_sample(size, seed)
    # A ROI spanning 0..255 is what trips pyradiomics' uint8 bin edges (see the module docstring).
    assert image[mask].min() == 0 and image[mask].max() == 255
    ours = pick(compute_features(image, mask), PYRADIOMICS_NAMES)
    expected = reference_values(reference_extractor, image, mask)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-12)


def test_pyradiomics_parity_for_a_nodule_cut_by_the_image_border(reference_extractor) -> None:
    image, mask = textured_sample(96, 4)
    mask = np.roll(mask, 40, axis=1)
    mask[:, :3] = False
    mask[:, -3:] = mask[:, -4:-3]  # reaches the right border
    ours = pick(compute_features(image, mask), PYRADIOMICS_NAMES)
    np.testing.assert_allclose(
        ours, reference_values(reference_extractor, image, mask), rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize(("low", "high"), [(0, 256), (180, 256), (0, 120)])
def test_first_order_features_match_numpy_on_uint8(low: int, high: int) -> None:
    """Mean, 8-wide-bin entropy and Pearson kurtosis recomputed with numpy, including a full 0..255 ROI."""
    rng = np.random.default_rng(7)
    image = rng.integers(low, high, size=(48, 48)).astype(np.uint8)
    image[10:12, 10:30] = low
    image[20:22, 10:30] = high - 1
    mask = np.zeros(image.shape, dtype=bool)
    mask[5:40, 8:44] = True
    values = image[mask].astype(np.float64)
    low = values.min() - values.min() % 8
    counts, _ = np.histogram(values, bins=np.arange(low, values.max() + 16, 8))
    p = counts[counts > 0] / counts.sum()
    centred = values - values.mean()
    kurtosis = np.mean(centred**4) / np.mean(centred**2) ** 2

    features = compute_features(image, mask)
    assert features[INDEX["firstorder_mean"]] == pytest.approx(values.mean(), rel=1e-12)
    assert features[INDEX["firstorder_entropy"]] == pytest.approx(-np.sum(p * np.log2(p)), rel=1e-9)
    assert features[INDEX["firstorder_kurtosis"]] == pytest.approx(kurtosis, rel=1e-9)


def test_ellipticity_is_one_minus_elongation() -> None:
    for seed in range(3):
        features = compute_features(*textured_sample(96, seed))
        assert features[INDEX["ellipticity"]] == pytest.approx(1 - features[INDEX["elongation"]], abs=1e-9)


# ------------------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("radius", [12, 30, 45])
def test_digital_disc(radius: int) -> None:
    mask = disc((128, 128), (64, 64), radius)
    features = compute_features(flat_image(mask.shape), mask)
    # The smoothed-contour perimeter gives 0.990-1.002 for discs of radius 10 to 80 px.
    assert features[INDEX["circularity"]] == pytest.approx(1.0, abs=0.02)
    assert features[INDEX["ellipticity"]] == pytest.approx(0.0, abs=1e-9)  # 4-fold symmetric
    assert features[INDEX["elongation"]] == pytest.approx(1.0, abs=1e-9)
    assert features[INDEX["aspect_ratio"]] == 1.0


def test_off_grid_disc_is_still_round() -> None:
    mask = disc((128, 128), (63.3, 64.6), 25)
    features = compute_features(flat_image(mask.shape), mask)
    assert features[INDEX["circularity"]] == pytest.approx(1.0, abs=0.02)
    assert features[INDEX["ellipticity"]] == pytest.approx(0.0, abs=0.02)
    assert features[INDEX["elongation"]] == pytest.approx(1.0, abs=0.02)
    assert features[INDEX["aspect_ratio"]] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("semi_rows", "semi_cols", "expected_aspect"),
    [(40, 20, 2.0), (20, 40, 0.5)],
    ids=["taller-than-wide", "wider-than-tall"],
)
def test_two_to_one_ellipse(semi_rows: int, semi_cols: int, expected_aspect: float) -> None:
    mask = ellipse((128, 128), (64, 64), semi_rows, semi_cols)
    features = compute_features(flat_image(mask.shape), mask)
    assert features[INDEX["ellipticity"]] == pytest.approx(0.5, abs=0.02)
    assert features[INDEX["elongation"]] == pytest.approx(0.5, abs=0.02)
    assert features[INDEX["aspect_ratio"]] == pytest.approx(expected_aspect, rel=0.03)  # 81/41 and 41/81
    # A 2:1 ellipse has circularity 0.841 (Ramanujan's perimeter): less round than a disc.
    assert features[INDEX["circularity"]] == pytest.approx(0.841, abs=0.02)


@pytest.mark.parametrize("rotated", [False, True], ids=["axis-aligned", "45-degrees"])
def test_square_circularity_is_pi_over_four(rotated: bool) -> None:
    if rotated:
        rows, cols = np.mgrid[:160, :160]
        mask = np.abs(rows - 80) + np.abs(cols - 80) <= 50  # a diamond of side 71 px
    else:
        mask = np.zeros((128, 128), dtype=bool)
        mask[32:96, 32:96] = True  # side 64 px
    features = compute_features(flat_image(mask.shape), mask)
    # Digital squares of side 64-80 px give 0.80-0.81 against pi/4 = 0.785.
    assert features[INDEX["circularity"]] == pytest.approx(math.pi / 4, abs=0.03)
    assert features[INDEX["aspect_ratio"]] == 1.0


@pytest.mark.parametrize(("inside", "outside"), [(50, 150), (150, 50)])
def test_step_edge_contrast_is_exact(inside: int, outside: int) -> None:
    mask = disc((96, 96), (48, 47), 25)
    image = np.where(mask, inside, outside).astype(np.uint8)
    features = compute_features(image, mask)
    assert features[INDEX["edge_intensity_contrast"]] == float(outside - inside)
    assert features[INDEX["edge_sharpness"]] > 0


def test_straight_step_sharpness_is_half_the_step_height() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :32] = True  # the nodule runs off three image borders: only column 31 is its margin
    image = np.where(mask, 50, 150).astype(np.uint8)
    features = compute_features(image, mask)
    assert features[INDEX["edge_sharpness"]] == pytest.approx(50.0, rel=1e-12)
    assert features[INDEX["edge_intensity_contrast"]] == 100.0


@pytest.mark.parametrize("ring_width", [1, 3, 5])
def test_contrast_ring_width_on_a_ramp(ring_width: int) -> None:
    """Grey level = column index, mask = left half: rings of width w average to 63.5 -/+ w/2."""
    image = np.tile(np.arange(128, dtype=np.uint8), (64, 1))
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, :64] = True
    assert edge_intensity_contrast(image, mask, ring_width) == pytest.approx(float(ring_width), rel=1e-12)
    features = compute_features(image, mask, ring_width=ring_width)
    assert features[INDEX["edge_intensity_contrast"]] == pytest.approx(float(ring_width), rel=1e-12)
    assert edge_sharpness(image, mask) == pytest.approx(1.0, rel=1e-12)  # a unit ramp reads 1 grey level/px


def test_blurred_step_is_less_sharp() -> None:
    mask = disc((96, 96), (48, 48), 25)
    sharp = np.where(mask, 50.0, 150.0)
    blurred = ndimage.gaussian_filter(sharp, 2.0)
    sharp_features = compute_features(sharp.astype(np.uint8), mask)
    blurred_features = compute_features(np.round(blurred).astype(np.uint8), mask)
    assert blurred_features[INDEX["edge_sharpness"]] < 0.7 * sharp_features[INDEX["edge_sharpness"]]
    assert 0 < blurred_features[INDEX["edge_intensity_contrast"]] < 100.0


def test_features_do_not_depend_on_the_surrounding_canvas() -> None:
    """The bounding-box crop inside compute_features must give the whole-image values."""
    image, mask = textured_sample(96, 5)
    padded_image = np.pad(image, ((7, 13), (21, 4)), mode="reflect")
    padded_mask = np.pad(mask, ((7, 13), (21, 4)))
    np.testing.assert_allclose(
        compute_features(padded_image, padded_mask), compute_features(image, mask), rtol=1e-12
    )
    # The public single-feature functions on the whole image agree with compute_features as well.
    features = compute_features(image, mask)
    assert circularity(mask) == pytest.approx(features[INDEX["circularity"]], rel=1e-12)
    assert ellipticity(mask) == pytest.approx(features[INDEX["ellipticity"]], rel=1e-12)
    assert aspect_ratio(mask) == features[INDEX["aspect_ratio"]]
    assert edge_sharpness(image, mask) == pytest.approx(features[INDEX["edge_sharpness"]], rel=1e-12)
    assert edge_intensity_contrast(image, mask) == pytest.approx(
        features[INDEX["edge_intensity_contrast"]], rel=1e-12
    )


def test_mask_encodings_agree() -> None:
    image, mask = textured_sample(64, 6)
    as_bool = compute_features(image, mask)
    np.testing.assert_array_equal(compute_features(image, mask.astype(np.uint8)), as_bool)
    np.testing.assert_array_equal(compute_features(image, mask.astype(np.uint8) * 255), as_bool)


# --------------------------------------------------------------------------------------- degenerate masks
def _no_warnings_compute(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compute_features(image, mask)


def test_empty_mask_gives_all_nan() -> None:
    image, _ = textured_sample(64, 0)
    features = _no_warnings_compute(image, np.zeros(image.shape, dtype=bool))
    assert features.shape == (13,)
    assert np.isnan(features).all()


def test_single_pixel_mask() -> None:
    image, _ = textured_sample(64, 0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[30, 30] = True
    features = _no_warnings_compute(image, mask)
    assert np.isnan(pick(features, PYRADIOMICS_NAMES)).all()  # pyradiomics rejects one voxel
    assert np.isnan(features[INDEX["ellipticity"]])
    assert features[INDEX["aspect_ratio"]] == 1.0
    assert np.isfinite(features[[INDEX["edge_sharpness"], INDEX["edge_intensity_contrast"]]]).all()


def test_one_pixel_thick_line() -> None:
    image, _ = textured_sample(64, 0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[30, 20:30] = True
    features = _no_warnings_compute(image, mask)
    assert np.isnan(pick(features, PYRADIOMICS_NAMES)).all()  # fewer than 2 dimensions
    assert features[INDEX["ellipticity"]] == pytest.approx(1.0)
    assert features[INDEX["aspect_ratio"]] == pytest.approx(0.1)


def test_two_isolated_pixels_leave_glcm_nan_quietly() -> None:
    image, _ = textured_sample(64, 0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[10, 10] = mask[40, 40] = True
    features = _no_warnings_compute(image, mask)
    assert np.isnan(pick(features, ("glcm_contrast", "glcm_energy", "glcm_correlation", "glcm_imc1"))).all()
    assert np.isfinite(features[INDEX["firstorder_mean"]])


def test_mask_filling_the_image_has_no_edge_features() -> None:
    image, _ = textured_sample(64, 0)
    features = _no_warnings_compute(image, np.ones(image.shape, dtype=bool))
    assert np.isnan(features[[INDEX["edge_sharpness"], INDEX["edge_intensity_contrast"]]]).all()
    assert np.isfinite(pick(features, PYRADIOMICS_NAMES)).all()
    assert np.isfinite(pick(features, ("circularity", "ellipticity", "aspect_ratio"))).all()


@pytest.mark.parametrize(
    ("image", "mask", "kwargs"),
    [
        (np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), bool), {}),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 9), bool), {}),
        (np.zeros((8, 8), complex), np.zeros((8, 8), bool), {}),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), bool), {"ring_width": 0}),
    ],
    ids=["3-d", "shape-mismatch", "complex", "ring-width-0"],
)
def test_malformed_input_raises(image: np.ndarray, mask: np.ndarray, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        compute_features(image, mask, **kwargs)


# --------------------------------------------------------------------------------------------------- batch
@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    samples = [textured_sample(64, seed) for seed in range(7)]
    images = np.stack([image for image, _ in samples])
    masks = np.stack([mask for _, mask in samples])
    masks[3] = False  # an empty mask in the middle
    return images, masks


def test_batch_equals_per_image_loop(batch) -> None:
    images, masks = batch
    expected = np.stack([compute_features(image, mask) for image, mask in zip(images, masks, strict=True)])
    result = compute_features_batch(images, masks, workers=1, progress=False)
    assert result.shape == (len(images), 13)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, expected)
    assert np.isnan(result[3]).all()
    # A list of differently sized samples works the same way.
    listed = compute_features_batch(
        [images[0], images[1][:50, :60]], [masks[0], masks[1][:50, :60]], workers=1
    )
    np.testing.assert_array_equal(listed[0], expected[0])
    np.testing.assert_array_equal(listed[1], compute_features(images[1][:50, :60], masks[1][:50, :60]))


def test_two_workers_equal_one(batch) -> None:
    images, masks = batch
    serial = compute_features_batch(images, masks, workers=1, progress=False)
    parallel = compute_features_batch(images, masks, workers=2, progress=False, chunk_size=2)
    np.testing.assert_array_equal(parallel, serial)


def test_worker_errors_reach_the_caller(batch) -> None:
    images, masks = batch
    bad_images = [*images[:3], np.zeros((4, 8, 8), np.uint8)]
    bad_masks = [*masks[:3], np.zeros((4, 8, 8), bool)]
    with pytest.raises(ValueError, match="2-D"):
        compute_features_batch(bad_images, bad_masks, workers=2, progress=False, chunk_size=1)


def test_progress_bar_goes_to_stderr(batch, capsys) -> None:
    images, masks = batch
    compute_features_batch(images[:2], masks[:2], workers=1, progress=True)
    captured = capsys.readouterr()
    assert "radiomics" in captured.err
    assert "2/2" in captured.err
    assert captured.out == ""


def test_empty_batch() -> None:
    result = compute_features_batch(np.zeros((0, 8, 8), np.uint8), np.zeros((0, 8, 8), bool), progress=False)
    assert result.shape == (0, 13)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers": 0}, "workers"), ({"chunk_size": 0}, "chunk_size"), ({"ring_width": -1}, "ring_width")],
)
def test_batch_rejects_bad_parameters(batch, kwargs: dict, message: str) -> None:
    images, masks = batch
    with pytest.raises(ValueError, match=message):
        compute_features_batch(images, masks, progress=False, **kwargs)


def test_batch_rejects_mismatched_lengths(batch) -> None:
    images, masks = batch
    with pytest.raises(ValueError, match="7 images but 6 masks"):
        compute_features_batch(images, masks[:6], progress=False)


def test_default_ring_width_is_three() -> None:
    assert EDGE_RING_WIDTH == 3
