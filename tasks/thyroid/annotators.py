"""Simulated readers: annotator variability of contours and TI-RADS grades (the paper's premise).

Paper §1: "Different annotators may draw systematically different contours and assign different risk
categories for the same case". ``spec/data.md`` makes this a setting of the phantom: several readers whose
contours differ in *style* and whose grade moves by ±1 level with a given probability.

Definitions (all lengths in pixels of the given masks):

- **Scale.** ``s = contour_strength * 0.02 * min(H, W)``: ``contour_strength`` is unitless; 1.0 means a
  length scale of 2 % of the image side (1.28 px at 64 px, 10.2 px at 512 px; 0.8 mm for the phantom's
  40 mm field of view, a plausible inter-reader contour offset), so the effect does not depend on
  the resolution the suite runs at. ``contour_strength = 0`` leaves every contour unchanged.
- **Styles** (a reader keeps one style for every case, so its bias is systematic, not random):

  ``dilated``    every pixel within Euclidean distance ``s`` of the true mask (dilation by a disc of
                 radius ``s``); a superset of the true mask.
  ``eroded``     every mask pixel farther than ``s`` from the background (erosion by the same disc; the
                 image border is not background); a subset of the true mask.
  ``smoothed``   the mask blurred with a Gaussian of sigma ``3 s`` and re-thresholded at the level that
                 keeps its area: rounds off lobulations and spiculations and fills narrow notches without
                 the systematic shrinking a fixed 0.5 threshold would add.
  ``polygonal``  each connected component's outer contour (``skimage.measure.find_contours`` at 0.5)
                 simplified by Douglas-Peucker with tolerance ``2 s`` (capped at half the component's
                 equivalent radius ``sqrt(area / pi)``, so a small nodule stays a polygon) and
                 rasterised again (holes filled): a coarse click-by-click outline.
  ``expert``     no change (only reader 0 when ``expert_reader=True``).

- **Empty contours.** If a style erases a non-empty mask (e.g. eroding a small nodule), the reader's mask
  falls back to the true mask and the sample is flagged in ``AnnotatedSet.fallback``. An empty true mask
  stays empty.
- **Grades.** With probability ``grade_flip_prob`` the reader's grade moves by exactly one level, up or
  down with equal probability; at TR1 it can only move up and at TR5 only down, so the grade stays in
  1..5 *and* ``grade_flip_prob`` is exactly the probability that the grade changes, at every level. The
  expert reader never changes the grade.
- **Readers.** ``n_readers`` readers; reader ``r`` has style ``styles[r % len(styles)]``, or with
  ``expert_reader=True`` reader 0 is the expert and reader ``r >= 1`` has ``styles[(r - 1) % len(styles)]``.
  Each sample is read by one reader drawn uniformly at random.

Determinism: sample ``i`` uses its own generator, ``SeedSequence([seed, _STREAM_TAG], spawn_key=(i,))``, so
its reader and grade do not depend on how many samples there are. The extra ``_STREAM_TAG`` entropy word
keeps these draws independent of the phantom's, whose sample ``i`` is seeded with
``SeedSequence(seed, spawn_key=(i,))`` and would otherwise share the same stream when both seeds are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "STYLES",
    "AnnotatedSet",
    "AnnotatorConfig",
    "annotator_rng",
    "apply_annotators",
    "apply_style",
    "reader_styles",
]

#: Styles a reader may have; ``expert`` is reserved for reader 0 with ``expert_reader=True``.
STYLES: tuple[str, ...] = ("dilated", "eroded", "smoothed", "polygonal")
_EXPERT = "expert"
_SCALE_FRACTION = 0.02  # contour_strength 1.0 = 2 % of the image side
_SMOOTH_SIGMA = 3.0  # Gaussian sigma of the smoothed style, in units of the scale s
_POLYGON_TOLERANCE = 2.0  # polygon tolerance of the polygonal style, in units of the scale s
_POLYGON_MAX_TOLERANCE = 0.5  # cap of that tolerance, in units of a component's equivalent radius
_STREAM_TAG = 0x616E6E6F  # "anno": separates the annotator streams from the phantom's


@dataclass(frozen=True)
class AnnotatorConfig:
    """Settings of the simulated readers; see the module docstring for the definitions."""

    n_readers: int = 3
    styles: tuple[str, ...] = STYLES
    contour_strength: float = 1.0  # unitless; the style's length scale is this times 2 % of the image side
    grade_flip_prob: float = 0.2  # probability that the reader's grade differs by exactly one level
    seed: int = 0
    expert_reader: bool = False  # reader 0 copies the truth (contour and grade)

    def __post_init__(self) -> None:
        if isinstance(self.styles, str):
            raise ValueError(
                f"Parameter `styles` should be a tuple of style names. Found `styles = {self.styles!r}`."
            )
        object.__setattr__(self, "styles", tuple(self.styles))
        if isinstance(self.n_readers, bool) or int(self.n_readers) != self.n_readers or self.n_readers < 1:
            raise ValueError(
                f"Parameter `n_readers` should be an integer >= 1. Found `n_readers = {self.n_readers!r}`."
            )
        if not self.styles:
            raise ValueError("Parameter `styles` should name at least one style. Found `styles = ()`.")
        for style in self.styles:
            if style not in STYLES:
                raise ValueError(
                    f"Unknown annotator style {style!r} in `styles`; known styles: {', '.join(STYLES)}."
                )
        strength = float(self.contour_strength)
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(
                "Parameter `contour_strength` should be a finite number >= 0. "
                f"Found `contour_strength = {self.contour_strength!r}`."
            )
        p = float(self.grade_flip_prob)
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(
                "Parameter `grade_flip_prob` should be in [0, 1]. "
                f"Found `grade_flip_prob = {self.grade_flip_prob!r}`."
            )
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(
                f"Parameter `seed` should be a non-negative integer. Found `seed = {self.seed!r}`."
            )


@dataclass
class AnnotatedSet:
    """What the readers delivered: one contour and one grade per sample, and who drew them.

    ``reader[i]`` is the reader of sample ``i``, ``reader_styles[r]`` the style of reader ``r``;
    ``fallback[i]`` is True where the style would have erased the contour and the true mask was kept;
    ``flipped[i]`` is True where the grade differs from the true level (always by exactly one).
    """

    masks: np.ndarray  # (N, H, W) uint8 in {0, 1}
    levels: np.ndarray  # (N,) int64 in 1..5
    reader: np.ndarray  # (N,) int64 in 0..n_readers-1
    reader_styles: list[str]
    fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,) bool
    flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,) bool
    config: AnnotatorConfig | None = None

    @property
    def n_fallbacks(self) -> int:
        """Number of samples whose reader style would have erased the contour."""
        return int(self.fallback.sum())

    def __len__(self) -> int:
        return len(self.levels)


def reader_styles(config: AnnotatorConfig) -> list[str]:
    """The style of each reader ``0..n_readers-1`` (see the module docstring)."""
    if config.expert_reader:
        return [_EXPERT] + [config.styles[(r - 1) % len(config.styles)] for r in range(1, config.n_readers)]
    return [config.styles[r % len(config.styles)] for r in range(config.n_readers)]


def annotator_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of the set size and of the phantom's streams."""
    return np.random.default_rng(np.random.SeedSequence(entropy=[int(seed), _STREAM_TAG], spawn_key=(index,)))


def _smoothed(mask: np.ndarray, sigma: float) -> np.ndarray:
    # Threshold at the level that keeps the area: a fixed 0.5 would also shrink every convex contour
    # (by about sigma**2 / (2 * radius)) and erase small nodules, mixing the eroded style into this one.
    blurred = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="nearest")
    area = int(mask.sum())
    flat = blurred.ravel()
    level = np.partition(flat, flat.size - area)[flat.size - area]
    return blurred >= level


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of an open polyline: keep a vertex only if it lies farther than
    ``tolerance`` from the chord between the kept neighbours. Written here because importing
    ``skimage.measure.approximate_polygon`` pulls in ``scipy.signal`` and ``scipy.stats`` (seconds)."""
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2:
            continue
        a, b = points[lo], points[hi]
        inner = points[lo + 1 : hi]
        chord = b - a
        length = math.hypot(*chord)
        if length == 0.0:
            dist = np.hypot(*(inner - a).T)
        else:
            dist = np.abs(chord[0] * (inner[:, 1] - a[1]) - chord[1] * (inner[:, 0] - a[0])) / length
        j = int(np.argmax(dist))
        if dist[j] > tolerance:
            keep[lo + 1 + j] = True
            stack += [(lo, lo + 1 + j), (lo + 1 + j, hi)]
    return points[keep]


def _simplify_closed(outline: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed contour: split at the vertex farthest from the first, simplify both."""
    far = int(np.argmax(np.hypot(*(outline - outline[0]).T)))
    first = _simplify(outline[: far + 1], tolerance)
    second = _simplify(outline[far:], tolerance)
    return np.concatenate([first, second[1:]])


def _polygonal(mask: np.ndarray, tolerance: float) -> np.ndarray:
    from skimage.draw import polygon
    from skimage.measure import find_contours

    labelled, n = ndimage.label(mask)
    out = np.zeros(mask.shape, dtype=bool)
    for component in range(1, n + 1):
        region = np.pad(ndimage.binary_fill_holes(labelled == component), 1)
        contours = find_contours(region.astype(np.float32), 0.5)
        if not contours:  # pragma: no cover - a non-empty padded component always has a contour
            continue
        outline = max(contours, key=len)
        # Cap the tolerance for small components so a polygon stays a polygon (a triangle at worst)
        # instead of collapsing to a line.
        radius = math.sqrt(float(region.sum()) / math.pi)
        coarse = _simplify_closed(outline, min(tolerance, _POLYGON_MAX_TOLERANCE * radius))
        coarse = coarse - 1.0  # undo the padding
        rr, cc = polygon(coarse[:, 0], coarse[:, 1], shape=mask.shape)
        out[rr, cc] = True
    return out


def apply_style(mask: np.ndarray, style: str, contour_strength: float) -> np.ndarray:
    """One reader's contour of one true ``mask`` (H, W) in ``style``, before the empty-contour fallback.

    Returns a bool array of the same shape; see the module docstring for the definitions.
    """
    if style not in (*STYLES, _EXPERT):
        raise ValueError(f"Unknown annotator style {style!r}; known styles: {', '.join(STYLES)}.")
    true = np.asarray(mask) > 0
    s = float(contour_strength) * _SCALE_FRACTION * min(true.shape)
    if style == _EXPERT or s <= 0 or not true.any():
        return true.copy()
    if style == "dilated":
        return ndimage.distance_transform_edt(~true) <= s
    if style == "eroded":
        if true.all():
            return true.copy()
        return ndimage.distance_transform_edt(true) > s
    if style == "smoothed":
        return _smoothed(true, _SMOOTH_SIGMA * s)
    return _polygonal(true, _POLYGON_TOLERANCE * s)


def apply_annotators(
    masks: np.ndarray, levels: np.ndarray, config: AnnotatorConfig | None = None
) -> AnnotatedSet:
    """Re-annotate a set as the simulated readers would: per sample a reader, its contour and its grade.

    ``masks`` (N, H, W) with foreground ``> 0``; ``levels`` (N,) TI-RADS levels 1..5. Deterministic in
    ``(masks, levels, config)``; sample ``i``'s reader and grade depend only on ``(config, i)``.
    """
    config = config or AnnotatorConfig()
    masks = np.asarray(masks)
    levels_arr = np.asarray(levels)
    if masks.ndim != 3:
        raise ValueError(
            f"Parameter `masks` should have shape (N, H, W). Found `masks.shape = {masks.shape}`."
        )
    if levels_arr.shape != (masks.shape[0],):
        raise ValueError(
            f"Parameter `levels` should have shape ({masks.shape[0]},), one level per mask. "
            f"Found `levels.shape = {levels_arr.shape}`."
        )
    if levels_arr.size and (
        not np.all(np.isfinite(levels_arr))
        or not np.all(levels_arr == np.round(levels_arr))
        or levels_arr.min() < 1
        or levels_arr.max() > 5
    ):
        bad = levels_arr[(levels_arr < 1) | (levels_arr > 5) | (levels_arr != np.round(levels_arr))]
        raise ValueError(f"Parameter `levels` should hold integers in 1..5. Found {bad[:5].tolist()}.")

    n = masks.shape[0]
    styles = reader_styles(config)
    out_masks = np.zeros(masks.shape, dtype=np.uint8)
    out_levels = levels_arr.astype(np.int64).copy()
    reader = np.zeros(n, dtype=np.int64)
    fallback = np.zeros(n, dtype=bool)
    flipped = np.zeros(n, dtype=bool)
    for i in range(n):
        rng = annotator_rng(config.seed, i)
        # Always the same three draws, so a sample's stream never depends on an earlier outcome.
        r = int(rng.integers(config.n_readers))
        flip = bool(rng.random() < config.grade_flip_prob)
        up = bool(rng.integers(2))
        reader[i] = r
        style = styles[r]
        true = masks[i] > 0
        drawn = apply_style(true, style, config.contour_strength)
        if true.any() and not drawn.any():
            drawn = true
            fallback[i] = True
        out_masks[i] = drawn
        if flip and style != _EXPERT:
            level = int(out_levels[i])
            step = 1 if level == 1 else -1 if level == 5 else (1 if up else -1)
            out_levels[i] = level + step
            flipped[i] = True
    return AnnotatedSet(out_masks, out_levels, reader, styles, fallback, flipped, config)
