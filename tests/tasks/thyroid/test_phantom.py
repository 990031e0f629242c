"""The synthetic B-mode phantom: determinism, label correctness, geometry and appearance cues."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mtlbench.tasks.thyroid.phantom import (
    PhantomConfig,
    PhantomSet,
    generate_phantom,
    render,
    sample_acr_features,
    sample_features_for_level,
    sample_rng,
)
from mtlbench.tasks.thyroid.tirads import (
    AcrFeatures,
    Composition,
    EchogenicFoci,
    Echogenicity,
    Margin,
    Shape,
    tirads_level,
)

N_LARGE = 500


@pytest.fixture(scope="module")
def large() -> PhantomSet:
    """500 scans at 64 px (uniform level weights), shared by the statistical tests (~3 s)."""
    return generate_phantom(N_LARGE, PhantomConfig(size=64, seed=11))


def bbox_ratio(mask: np.ndarray) -> float:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)


def inside_minus_ring(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean intensity inside the mask minus the mean of a ring 2-5 px outside it."""
    m = mask.astype(bool)
    ring = ndimage.binary_dilation(m, iterations=5) & ~ndimage.binary_dilation(m, iterations=2)
    return float(image[m].mean() - image[ring].mean())


def test_types_shapes_and_ranges(large: PhantomSet) -> None:
    n = N_LARGE
    assert len(large) == n
    assert large.images.shape == (n, 64, 64) and large.images.dtype == np.uint8
    assert large.masks.shape == (n, 64, 64) and large.masks.dtype == np.uint8
    assert set(np.unique(large.masks)) <= {0, 1}
    assert large.levels.shape == (n,) and large.levels.dtype == np.int64
    assert large.levels.min() >= 1 and large.levels.max() <= 5
    assert large.points.shape == (n, 5) and np.issubdtype(large.points.dtype, np.integer)
    assert len(large.features) == n and all(isinstance(f, AcrFeatures) for f in large.features)
    assert large.max_diameter_mm.shape == (n,) and np.all(large.max_diameter_mm > 0)
    # the images use the grey range: dark cysts and shadows, bright calcifications and skin
    assert large.images.min() < 20 and large.images.max() > 235
    assert 60 < large.images.mean() < 190


def test_labels_are_the_acr_level_of_the_sampled_features(large: PhantomSet) -> None:
    for level, points, features in zip(large.levels, large.points, large.features, strict=True):
        assert level == tirads_level(features)
        assert tuple(points) == features.point_vector()


def test_class_shares_follow_uniform_level_weights(large: PhantomSet) -> None:
    shares = np.bincount(large.levels, minlength=6)[1:] / N_LARGE
    np.testing.assert_allclose(shares, 0.2, atol=0.06)


def test_level_weights_steer_the_class_shares() -> None:
    rng = np.random.default_rng(0)
    only_tr3 = {tirads_level(sample_acr_features(rng, (0, 0, 1, 0, 0))) for _ in range(50)}
    assert only_tr3 == {3}
    levels = np.array([tirads_level(sample_acr_features(rng, (1, 0, 0, 0, 3))) for _ in range(800)])
    assert set(np.unique(levels)) == {1, 5}
    assert abs((levels == 5).mean() - 0.75) < 0.05


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_sample_features_for_level(level: int) -> None:
    rng = np.random.default_rng(level)
    for _ in range(30):
        f = sample_features_for_level(rng, level)
        assert tirads_level(f) == level
        if f.composition not in (Composition.CYSTIC, Composition.SPONGIFORM):
            assert f.points() >= 2  # the lexicon-inconsistent 1-point reading is never drawn
        if f.echogenicity is Echogenicity.ANECHOIC:
            assert f.composition is Composition.CYSTIC


def test_same_seed_gives_identical_bytes_and_other_seed_differs() -> None:
    a = generate_phantom(6, PhantomConfig(size=48, seed=3))
    b = generate_phantom(6, PhantomConfig(size=48, seed=3))
    c = generate_phantom(6, PhantomConfig(size=48, seed=4))
    assert a.images.tobytes() == b.images.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    assert np.array_equal(a.levels, b.levels) and a.features == b.features
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)


def test_sample_generator_is_the_seed_sequence_spawn_child() -> None:
    children = np.random.SeedSequence(7).spawn(3)
    for i, child in enumerate(children):
        expected = np.random.default_rng(child).random(4)
        np.testing.assert_array_equal(sample_rng(7, i).random(4), expected)


def test_max_diameter_matches_the_mask(large: PhantomSet) -> None:
    mm_per_px = 40.0 / 64
    for mask, diameter in zip(large.masks[:100], large.max_diameter_mm[:100], strict=True):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert extent * mm_per_px * 0.95 <= diameter <= np.hypot(rows.size, cols.size) * mm_per_px * 1.05


def test_growing_n_keeps_the_first_samples() -> None:
    k = 4
    short = generate_phantom(k, PhantomConfig(size=48, seed=5))
    long = generate_phantom(2 * k, PhantomConfig(size=48, seed=5))
    assert np.array_equal(short.images, long.images[:k])
    assert np.array_equal(short.masks, long.masks[:k])
    assert np.array_equal(short.levels, long.levels[:k])
    assert short.features == long.features[:k]


def test_masks_are_non_empty_and_clear_of_the_border(large: PhantomSet) -> None:
    for mask in large.masks:
        assert mask.sum() > 0
        assert not mask[:2].any() and not mask[-2:].any()
        assert not mask[:, :2].any() and not mask[:, -2:].any()


def test_nodule_sizes_vary(large: PhantomSet) -> None:
    widths = np.array([np.ptp(np.flatnonzero(m.any(axis=0))) + 1 for m in large.masks]) / 64
    assert widths.min() < 0.2 and widths.max() > 0.38
    centres = np.array([ndimage.center_of_mass(m)[1] for m in large.masks]) / 64
    assert centres.min() < 0.3 and centres.max() > 0.7


def test_shape_matches_the_mask_aspect_ratio(large: PhantomSet) -> None:
    taller = [f.shape is Shape.TALLER_THAN_WIDE for f in large.features]
    ratios = np.array([bbox_ratio(m) for m in large.masks])
    assert any(taller) and not all(taller)
    assert np.all(ratios[np.array(taller)] > 1.0)
    assert np.all(ratios[~np.array(taller)] < 1.0)


def render_many(features: AcrFeatures, count: int, size: int = 64, seed: int = 0) -> list[tuple]:
    return [render(features, size, sample_rng(seed, i)) for i in range(count)]


def test_echogenicity_orders_the_nodule_against_its_surroundings() -> None:
    """Averaged over scans: very hypo < hypo < 0 < hyper (inside minus surrounding ring)."""
    contrast = {}
    for echo in (Echogenicity.VERY_HYPOECHOIC, Echogenicity.HYPOECHOIC, Echogenicity.HYPERECHOIC):
        f = AcrFeatures(Composition.SOLID, echo, Shape.WIDER_THAN_TALL, Margin.SMOOTH)
        contrast[echo] = np.mean([inside_minus_ring(img, m) for img, m in render_many(f, 12, seed=21)])
    assert contrast[Echogenicity.VERY_HYPOECHOIC] < contrast[Echogenicity.HYPOECHOIC] < -10
    assert contrast[Echogenicity.HYPERECHOIC] > 10


def test_echogenicity_contrast_in_the_generated_set(large: PhantomSet) -> None:
    hypo, hyper = [], []
    for img, m, f in zip(large.images, large.masks, large.features, strict=True):
        if f.composition is not Composition.SOLID or f.foci:
            continue
        if f.echogenicity in (Echogenicity.HYPOECHOIC, Echogenicity.VERY_HYPOECHOIC):
            hypo.append(inside_minus_ring(img, m))
        elif f.echogenicity is Echogenicity.HYPERECHOIC:
            hyper.append(inside_minus_ring(img, m))
    assert len(hypo) >= 10 and len(hyper) >= 3
    assert np.mean(hypo) < -10 and np.mean(hyper) > 10


@pytest.mark.parametrize("composition", [Composition.CYSTIC, Composition.SPONGIFORM, Composition.MIXED])
def test_cystic_spaces_are_dark(composition: Composition) -> None:
    echo = Echogenicity.ANECHOIC if composition is Composition.CYSTIC else Echogenicity.ISOECHOIC
    f = AcrFeatures(composition, echo, Shape.WIDER_THAN_TALL, Margin.SMOOTH)
    scans = render_many(f, 8, seed=31)
    assert np.mean([inside_minus_ring(img, m) for img, m in scans]) < -10
    if composition is not Composition.SPONGIFORM:  # microcysts are partly blurred at 64 px
        # the darkest tenth of the nodule is near-anechoic
        assert np.mean([np.percentile(img[m.astype(bool)], 10) for img, m in scans]) < 70


@pytest.mark.parametrize(
    "kind", [EchogenicFoci.PUNCTATE, EchogenicFoci.MACROCALCIFICATION, EchogenicFoci.PERIPHERAL_RIM]
)
def test_echogenic_foci_are_bright(kind: EchogenicFoci) -> None:
    plain = AcrFeatures(Composition.SOLID, Echogenicity.HYPOECHOIC, Shape.WIDER_THAN_TALL, Margin.SMOOTH)
    with_foci = AcrFeatures(plain.composition, plain.echogenicity, plain.shape, plain.margin, (kind,))
    peak_plain = [np.percentile(img[m.astype(bool)], 99) for img, m in render_many(plain, 8, seed=41)]
    peak_foci = [img[m.astype(bool)].max() for img, m in render_many(with_foci, 8, seed=41)]
    assert max(peak_plain) < 200
    assert np.median(peak_foci) > 215


def test_macrocalcification_casts_a_shadow() -> None:
    f = AcrFeatures(
        Composition.SOLID,
        Echogenicity.ISOECHOIC,
        Shape.WIDER_THAN_TALL,
        Margin.SMOOTH,
        (EchogenicFoci.MACROCALCIFICATION,),
    )
    plain = AcrFeatures(Composition.SOLID, Echogenicity.ISOECHOIC, Shape.WIDER_THAN_TALL, Margin.SMOOTH)

    def below_nodule(img: np.ndarray, m: np.ndarray) -> float:
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        centre = slice(cols[0] + (cols[-1] - cols[0]) // 3, cols[-1] - (cols[-1] - cols[0]) // 3 + 1)
        return float(img[rows[-1] + 2 :, centre].mean())

    shadowed = np.mean([below_nodule(img, m) for img, m in render_many(f, 10, seed=51)])
    unshadowed = np.mean([below_nodule(img, m) for img, m in render_many(plain, 10, seed=51)])
    assert shadowed < unshadowed - 15


@pytest.mark.parametrize("size", [16, 40, 96, 128])
def test_render_sizes(size: int) -> None:
    f = AcrFeatures(Composition.SOLID, Echogenicity.HYPOECHOIC, Shape.TALLER_THAN_WIDE, Margin.IRREGULAR)
    image, mask = render(f, size, np.random.default_rng(size))
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert mask.any() and bbox_ratio(mask) > 1.0


def test_render_is_a_function_of_the_generator_state() -> None:
    f = AcrFeatures(Composition.MIXED, Echogenicity.HYPOECHOIC, Shape.WIDER_THAN_TALL, Margin.LOBULATED)
    a = render(f, 64, np.random.default_rng(9))
    b = render(f, 64, np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 8},
        {"size": 64.5},
        {"level_weights": (1, 1, 1, 1)},
        {"level_weights": (0, 0, 0, 0, 0)},
        {"level_weights": (1, -1, 1, 1, 1)},
        {"dynamic_range_db": 5.0},
        {"nodule_width": (0.4, 0.2)},
        {"psf_axial": 0.0},
        {"carotid_probability": 1.5},
        {"compounding": 0},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PhantomConfig(**kwargs)


def test_generate_rejects_negative_n_and_allows_zero() -> None:
    with pytest.raises(ValueError):
        generate_phantom(-1)
    empty = generate_phantom(0, PhantomConfig(size=32))
    assert empty.images.shape == (0, 32, 32) and len(empty) == 0
