"""Simulated readers: contour styles, grade flips, reader assignment, determinism, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mtlbench.tasks.thyroid.annotators import (
    STYLES,
    AnnotatorConfig,
    apply_annotators,
    apply_style,
    reader_styles,
)
from mtlbench.tasks.thyroid.phantom import PhantomConfig, generate_phantom

SIZE = 64


def ellipse(cy: float, cx: float, ry: float, rx: float, size: int = SIZE, lobes: float = 0.0) -> np.ndarray:
    """A filled ellipse; ``lobes`` > 0 adds a 7-fold radial ripple (a lobulated contour)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    radius = 1.0 + lobes * np.cos(7 * np.arctan2(dy, dx))
    return (np.hypot(dy, dx) <= radius).astype(np.uint8)


def mask_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (lobulated) ellipses and random levels 1..5."""
    rng = np.random.default_rng(seed)
    masks = np.stack(
        [
            ellipse(
                *rng.uniform(24, 40, 2), *rng.uniform(6, 16, 2), lobes=float(rng.choice([0.0, 0.15, 0.3]))
            )
            for _ in range(n)
        ]
    )
    return masks, rng.integers(1, 6, size=n)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_deterministic_and_independent_of_n() -> None:
    masks, levels = mask_set(40)
    config = AnnotatorConfig(n_readers=4, seed=3)
    a = apply_annotators(masks, levels, config)
    b = apply_annotators(masks.copy(), levels.copy(), config)
    for field in ("masks", "levels", "reader", "fallback", "flipped"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    head = apply_annotators(masks[:15], levels[:15], config)
    for field in ("masks", "levels", "reader", "flipped"):
        np.testing.assert_array_equal(getattr(head, field), getattr(a, field)[:15])
    other = apply_annotators(masks, levels, AnnotatorConfig(n_readers=4, seed=4))
    assert not np.array_equal(other.reader, a.reader)


def test_output_contract() -> None:
    masks, levels = mask_set(12)
    out = apply_annotators(masks, levels, AnnotatorConfig())
    assert out.masks.shape == masks.shape and out.masks.dtype == np.uint8
    assert set(np.unique(out.masks).tolist()) <= {0, 1}
    assert out.levels.shape == (12,) and out.levels.dtype == np.int64
    assert out.reader.shape == (12,) and len(out) == 12
    assert out.reader_styles == ["dilated", "eroded", "smoothed"]
    assert out.n_fallbacks == 0
    for i in range(12):  # each sample's contour is its reader's style applied to the truth
        expected = apply_style(masks[i], out.reader_styles[out.reader[i]], 1.0)
        np.testing.assert_array_equal(out.masks[i], expected)


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0, 4.0])
def test_dilated_contains_and_eroded_within_truth(strength: float) -> None:
    masks, _ = mask_set(10)
    for m in masks.astype(bool):
        dilated = apply_style(m, "dilated", strength)
        eroded = apply_style(m, "eroded", strength)
        assert np.all(dilated[m]) and not np.any(eroded[~m])
    # Strength 1 at 64 px is a 1.28 px scale: a one-pixel ring is added or removed.
    m = ellipse(32, 32, 10, 14).astype(bool)
    assert apply_style(m, "dilated", 1.0).sum() > m.sum() > apply_style(m, "eroded", 1.0).sum()


def test_smoothed_rounds_lobulations_and_keeps_area() -> None:
    lobulated = ellipse(32, 32, 14, 14, lobes=0.3).astype(bool)
    smooth = apply_style(lobulated, "smoothed", 2.0)
    assert abs(int(smooth.sum()) - int(lobulated.sum())) <= 0.02 * lobulated.sum()
    round_disc = ellipse(32, 32, 14, 14).astype(bool)
    assert dice(smooth, round_disc) > dice(lobulated, round_disc)  # closer to the underlying circle


def test_polygonal_is_a_coarse_outline() -> None:
    disc = ellipse(32, 32, 14, 14).astype(bool)
    poly = apply_style(disc, "polygonal", 2.0)
    assert 0.8 < dice(poly, disc) < 1.0
    tiny = ellipse(32, 32, 2, 2).astype(bool)  # the tolerance cap keeps a small nodule non-empty
    assert apply_style(tiny, "polygonal", 4.0).any()


def test_dice_decreases_with_contour_strength() -> None:
    masks, levels = mask_set(24)
    strengths = [0.0, 1.0, 2.0, 4.0]
    means = {style: [] for style in STYLES}
    for style in STYLES:
        for s in strengths:
            means[style].append(np.mean([dice(apply_style(m, style, s), m) for m in masks]))
    for style, values in means.items():
        assert values[0] == 1.0
        assert all(a > b for a, b in itertools.pairwise(values)), (style, values)
    overall = []
    for s in strengths:
        out = apply_annotators(masks, levels, AnnotatorConfig(n_readers=4, contour_strength=s))
        overall.append(np.mean([dice(a, b) for a, b in zip(out.masks, masks)]))
    assert all(a > b for a, b in itertools.pairwise(overall)), overall


def test_fallback_when_a_style_erases_the_contour() -> None:
    masks = np.stack([ellipse(32, 32, 2, 2), ellipse(32, 32, 14, 14), np.zeros((SIZE, SIZE), np.uint8)])
    out = apply_annotators(
        masks, np.array([3, 3, 3]), AnnotatorConfig(n_readers=1, styles=("eroded",), contour_strength=3.0)
    )
    np.testing.assert_array_equal(out.fallback, [True, False, False])
    assert out.n_fallbacks == 1
    np.testing.assert_array_equal(out.masks[0], masks[0])  # the tiny nodule keeps its true mask
    assert not out.masks[2].any()  # an empty truth stays empty, and is not a fallback
    assert all(out.masks[i].any() for i in (0, 1))


def test_grade_flip_rate_and_step() -> None:
    n, p = 2000, 0.2
    masks = np.zeros((n, 8, 8), np.uint8)
    masks[:, 2:6, 2:6] = 1
    levels = np.tile(np.arange(1, 6), n // 5)
    out = apply_annotators(masks, levels, AnnotatorConfig(grade_flip_prob=p, seed=1))
    changed = out.levels != levels
    np.testing.assert_array_equal(changed, out.flipped)
    assert np.all(np.abs(out.levels - levels) <= 1)
    assert out.levels.min() >= 1 and out.levels.max() <= 5
    tolerance = 4.0 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard errors
    assert abs(changed.mean() - p) <= tolerance, changed.mean()
    for level in (1, 3, 5):  # the stated probability holds at the edges too
        sel = levels == level
        assert abs(changed[sel].mean() - p) <= 4.0 * math.sqrt(p * (1 - p) / sel.sum())
    middle = (levels == 3) & changed
    assert 0.35 < (out.levels[middle] > 3).mean() < 0.65  # up and down equally likely
    none = apply_annotators(masks[:50], levels[:50], AnnotatorConfig(grade_flip_prob=0.0))
    np.testing.assert_array_equal(none.levels, levels[:50])


def test_reader_assignment_uniform_and_expert() -> None:
    n = 2000
    masks = np.zeros((n, 8, 8), np.uint8)
    masks[:, 2:6, 2:6] = 1
    levels = np.full(n, 3)
    out = apply_annotators(
        masks, levels, AnnotatorConfig(n_readers=4, grade_flip_prob=1.0, expert_reader=True)
    )
    assert out.reader_styles == ["expert", "dilated", "eroded", "smoothed"]
    counts = np.bincount(out.reader, minlength=4)
    assert np.all(np.abs(counts / n - 0.25) <= 4.0 * math.sqrt(0.25 * 0.75 / n)), counts
    expert = out.reader == 0
    np.testing.assert_array_equal(out.levels[expert], levels[expert])  # the expert never flips
    np.testing.assert_array_equal(out.masks[expert], masks[expert])
    assert np.all(out.levels[~expert] != 3)


def test_reader_styles_cycle() -> None:
    assert reader_styles(AnnotatorConfig(n_readers=6)) == [*STYLES, "dilated", "eroded"]
    assert reader_styles(AnnotatorConfig(n_readers=2, styles=("polygonal",), expert_reader=True)) == [
        "expert",
        "polygonal",
    ]


def test_phantom_masks() -> None:
    phantom = generate_phantom(6, PhantomConfig(size=32))
    out = apply_annotators(phantom.masks, phantom.levels, AnnotatorConfig(n_readers=4, seed=2))
    assert all(out.masks[i].any() for i in range(6))
    assert np.all(np.abs(out.levels - phantom.levels) <= 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"styles": ("dilated", "wobbly")}, "'wobbly'"),
        ({"styles": "dilated"}, "styles = 'dilated'"),
        ({"styles": ()}, "at least one style"),
        ({"styles": ("expert",)}, "'expert'"),
        ({"n_readers": 0}, "n_readers = 0"),
        ({"grade_flip_prob": 1.5}, "grade_flip_prob = 1.5"),
        ({"grade_flip_prob": -0.1}, "grade_flip_prob = -0.1"),
        ({"grade_flip_prob": float("nan")}, "grade_flip_prob = nan"),
        ({"contour_strength": -1.0}, "contour_strength = -1.0"),
        ({"seed": -1}, "seed = -1"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AnnotatorConfig(**kwargs)


def test_input_validation() -> None:
    masks, levels = mask_set(3)
    with pytest.raises(ValueError, match="levels"):
        apply_annotators(masks, np.array([0, 2, 3]))
    with pytest.raises(ValueError, match="levels"):
        apply_annotators(masks, levels[:2])
    with pytest.raises(ValueError, match="masks"):
        apply_annotators(masks[0], levels[:1])
    with pytest.raises(ValueError, match="'wobbly'"):
        apply_style(masks[0], "wobbly", 1.0)
