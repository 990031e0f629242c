"""The 13 TI-RADS-aligned radiomics targets of the clinically guided subspace (Salama et al., section 2.2).

Each target is computed from one 2-D grey-level image and its ground-truth nodule mask. The order of
:data:`FEATURE_NAMES` is the order of the ``h_tirads`` slice. Pixels are unit squares (no physical
spacing); rows are image depth (the ultrasound axial direction), columns are image width.

=======================  ===================  ==========================================================
name                     computed by          definition
=======================  ===================  ==========================================================
circularity              scipy + skimage      ``4*pi*A / P**2``, A = pixel count, P = length of the 0.5
                                              iso-contour of the mask smoothed with a Gaussian of sigma
                                              1 px (:func:`circularity`); about 1 for a digital disc
ellipticity              numpy                ``1 - minor/major`` axis length of the moment-equivalent
                                              ellipse (:func:`ellipticity`)
elongation               pyradiomics shape2D  ``Elongation``: ``sqrt(lambda_minor / lambda_major)`` of
                                              the pixel-coordinate covariance
aspect_ratio             numpy                bounding-box depth (rows) / width (columns); > 1 is the
                                              ACR "taller than wide" criterion (:func:`aspect_ratio`)
edge_sharpness           scipy                mean Sobel gradient magnitude (grey levels per pixel) on
                                              the mask's inner boundary (:func:`edge_sharpness`)
edge_intensity_contrast  scipy                mean of a ring just outside the mask minus mean of a ring
                                              just inside; > 0 for a hypoechoic (darker) nodule
                                              (:func:`edge_intensity_contrast`)
firstorder_mean          pyradiomics          ``firstorder`` ``Mean`` of the grey levels in the mask
firstorder_entropy       pyradiomics          ``firstorder`` ``Entropy`` (bits) of the binned histogram
firstorder_kurtosis      pyradiomics          ``firstorder`` ``Kurtosis`` (Pearson: 3 for a Gaussian)
glcm_contrast            pyradiomics          ``glcm`` ``Contrast``
glcm_energy              pyradiomics          ``glcm`` ``JointEnergy`` (angular second moment)
glcm_correlation         pyradiomics          ``glcm`` ``Correlation``
glcm_imc1                pyradiomics          ``glcm`` ``Imc1`` (informational measure of correlation 1)
=======================  ===================  ==========================================================

Ellipticity and elongation are two readings of one eigenvalue ratio (``ellipticity == 1 - elongation``
up to rounding); the paper lists both, so both are kept.

pyradiomics extraction settings (:data:`PYRADIOMICS_SETTINGS`) and why:

* ``binWidth = 8``: a fixed bin width (pyradiomics recommends it over a fixed bin count) keeps one bin
  meaning one brightness range in every image. 8 gives 32 bins over the 8-bit range, 10 to 25 for a
  nodule spanning 80 to 200 grey levels; pyradiomics' default of 25 would leave a dark nodule 3 or 4.
* ``force2D = True, force2Ddimension = 0``, with the image passed as a ``(1, H, W)`` volume: the
  documented way to get ``shape2D`` and in-plane texture from a 2-D slice; GLCM uses the 4 in-plane
  angles. (A 2-D SimpleITK image *with* ``force2D`` makes pyradiomics drop the row axis: one angle.)
* GLCM ``distances = [1]``, ``symmetricalGLCM = True``, ``weightingNorm = None`` (each feature computed
  per angle, then averaged): pyradiomics' defaults.
* No normalisation, resampling or resegmentation: ultrasound grey levels share one 8-bit display scale.
* ``additionalInfo = False``: the diagnostic block hashes the image and costs time for nothing here.

The image reaches pyradiomics as float64: with NumPy >= 2 pyradiomics' bin-edge computation
(``maximum + 2 * binWidth``, in the image's dtype) wraps around for a ``uint8`` ROI that spans nearly the
whole 8-bit range (lowest bin edge <= 15 and maximum >= 240, e.g. a cystic nodule with echogenic foci)
and silently leaves 2 bins instead of 32. Float grey levels give the intended bins, same values otherwise.

Masks: any non-zero value is nodule. An empty mask, or one too small for a feature, gives NaN for the
affected features and never raises. pyradiomics rejects a single pixel and a mask confined to one row
or one column (its 8 features are NaN); GLCM features are NaN when no two mask pixels are neighbours;
a mask without a pixel next to background inside the image (it fills the image) has no edge features.

SciPy, scikit-image, SimpleITK and pyradiomics are imported on first use; the pyradiomics extractor is
built once per process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "EDGE_RING_WIDTH",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "PERIMETER_SMOOTHING_SIGMA",
    "PYRADIOMICS_FEATURES",
    "PYRADIOMICS_SETTINGS",
    "aspect_ratio",
    "circularity",
    "compute_features",
    "compute_features_batch",
    "edge_intensity_contrast",
    "edge_sharpness",
    "ellipticity",
    "extraction_settings",
]

FEATURE_NAMES: tuple[str, ...] = (
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

# Bump whenever a definition or a setting changes what a feature value means: it is part of the cache key.
FEATURE_VERSION = "1"

EDGE_RING_WIDTH = 3
"""Default thickness in pixels of the rings used by :func:`edge_intensity_contrast`."""

PERIMETER_SMOOTHING_SIGMA = 1.0
"""Gaussian sigma (pixels) applied to the mask before its perimeter is traced in :func:`circularity`."""

# scipy's Sobel is [-1, 0, 1] across and [1, 2, 1] along the edge: a unit ramp gives 8.
_SOBEL_SCALE = 8.0

PYRADIOMICS_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
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
)
"""Settings passed to ``radiomics.featureextractor.RadiomicsFeatureExtractor`` (see the module docstring)."""

PYRADIOMICS_FEATURES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "elongation": ("shape2D", "Elongation"),
        "firstorder_mean": ("firstorder", "Mean"),
        "firstorder_entropy": ("firstorder", "Entropy"),
        "firstorder_kurtosis": ("firstorder", "Kurtosis"),
        "glcm_contrast": ("glcm", "Contrast"),
        "glcm_energy": ("glcm", "JointEnergy"),
        "glcm_correlation": ("glcm", "Correlation"),
        "glcm_imc1": ("glcm", "Imc1"),
    }
)
"""Our feature name -> (pyradiomics feature class, pyradiomics feature name)."""

_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

ArrayBatch = np.ndarray | Sequence[np.ndarray]


def extraction_settings(ring_width: int = EDGE_RING_WIDTH) -> dict[str, Any]:
    """Everything besides the code version that changes a feature value, as a JSON-serialisable dict."""
    return {
        "feature_names": list(FEATURE_NAMES),
        "pyradiomics": dict(PYRADIOMICS_SETTINGS),
        "pyradiomics_features": {k: list(v) for k, v in PYRADIOMICS_FEATURES.items()},
        "edge_ring_width": int(ring_width),
        "perimeter_smoothing_sigma": PERIMETER_SMOOTHING_SIGMA,
        "sobel_scale": _SOBEL_SCALE,
    }


# --------------------------------------------------------------------------------------------- validation
def _as_pair(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image must hold real grey levels (integer or float), got dtype {image.dtype}")
    return image, mask != 0


def _check_ring_width(ring_width: int) -> int:
    if isinstance(ring_width, bool) or not isinstance(ring_width, (int, np.integer)) or ring_width < 1:
        raise ValueError(
            f"Parameter `ring_width` should be a positive integer. Found `ring_width = {ring_width!r}`."
        )
    return int(ring_width)


# ------------------------------------------------------------------------------------------ shape features
def circularity(mask: np.ndarray, sigma: float = PERIMETER_SMOOTHING_SIGMA) -> float:
    """``4*pi*A / P**2``: 1 for a disc, pi/4 for a square, less for lobulated or spiculated margins.

    ``A`` is the number of mask pixels. ``P`` is the total length of the 0.5 iso-contours (marching
    squares, ``skimage.measure.find_contours``) of the mask smoothed with a Gaussian of ``sigma`` pixels,
    zero-padded beyond the image (a nodule cut by the image border is closed along it). The smoothing
    removes the pixel staircase, which lengthens every oblique or curved margin: the raw marching-squares
    contour gives about 0.90 for a large disc. With ``sigma = 1``, digital discs of radius 10 to 80 px
    give 0.990 to 1.002 (within 0.015 of 1) and axis-aligned squares of side 64 and 80 px give 0.807 and
    0.802 (pi/4 = 0.785, within 0.025); small shapes read high (a 10 px square gives 0.94). Holes add
    their contour to ``P`` and take their pixels from ``A``. NaN for an empty mask.
    """
    from scipy import ndimage
    from skimage import measure

    mask = np.asarray(mask) != 0
    area = int(mask.sum())
    if area == 0:
        return math.nan
    rows, cols = np.nonzero(mask)
    pad = math.ceil(4.0 * sigma) + 2  # the Gaussian's support (truncate=4) plus a closing margin
    tight = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    field = ndimage.gaussian_filter(np.pad(tight, pad).astype(np.float64), sigma, mode="constant")
    perimeter = 0.0
    for contour in measure.find_contours(field, 0.5):
        perimeter += float(np.hypot(*np.diff(contour, axis=0).T).sum())
    if perimeter <= 0.0:
        return math.nan
    return 4.0 * math.pi * area / perimeter**2


def _covariance_eigenvalues(rows: np.ndarray, cols: np.ndarray) -> tuple[float, float]:
    r = rows - rows.mean()
    c = cols - cols.mean()
    a, b, d = float(np.mean(r * r)), float(np.mean(r * c)), float(np.mean(c * c))
    half_trace = 0.5 * (a + d)
    root = math.hypot(0.5 * (a - d), b)
    return max(half_trace - root, 0.0), half_trace + root


def ellipticity(mask: np.ndarray) -> float:
    """``1 - minor/major`` axis length of the moment-equivalent ellipse: 0 for a disc, 0.5 for a 2:1 one.

    The ellipse with the same second central moments as the mask pixels has axis lengths proportional to
    the square roots of the eigenvalues of the pixels' coordinate covariance, so ``minor/major =
    sqrt(lambda_min / lambda_max)``, which is also pyradiomics' ``Elongation`` (ellipticity =
    1 - elongation). 1 for a one-pixel-thick line, NaN for an empty or single-pixel mask.
    """
    return _ellipticity(*np.nonzero(np.asarray(mask)))


def _ellipticity(rows: np.ndarray, cols: np.ndarray) -> float:
    if rows.size == 0:
        return math.nan
    minor, major = _covariance_eigenvalues(rows.astype(np.float64), cols.astype(np.float64))
    if major <= 0.0:
        return math.nan
    return 1.0 - math.sqrt(minor / major)


def aspect_ratio(mask: np.ndarray) -> float:
    """Depth / width of the nodule's extent: rows spanned over columns spanned (ACR TI-RADS shape).

    Rows are the ultrasound depth (anteroposterior) direction, columns the transverse one, both counted in
    pixels including the end pixels. Greater than 1 means "taller than wide" (a TI-RADS 3-point feature);
    exactly 1 for a digital disc. NaN for an empty mask.
    """
    return _aspect_ratio(*np.nonzero(np.asarray(mask)))


def _aspect_ratio(rows: np.ndarray, cols: np.ndarray) -> float:
    if rows.size == 0:
        return math.nan
    return float(rows.max() - rows.min() + 1) / float(cols.max() - cols.min() + 1)


# ------------------------------------------------------------------------------------------- edge features
def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)
    # border_value=1: the image border is where the field of view ends, not a nodule margin.
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=1)


def edge_sharpness(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel gradient magnitude, in grey levels per pixel, over the mask's inner boundary pixels.

    The gradient is ``hypot(Sobel_rows, Sobel_cols) / 8`` of the image as float64
    (``scipy.ndimage.sobel``, reflected at the image border; the division makes a unit ramp read 1).
    Boundary pixels are mask pixels with at least one 4-neighbour outside the mask and inside the image.
    A straight step of height ``h`` reads ``h/2`` on its inner side and less once blurred: larger means a
    sharper (well-defined) margin. NaN when the mask is empty or has no such pixel.
    """
    from scipy import ndimage

    image, mask = _as_pair(image, mask)
    boundary = _inner_boundary(mask)
    if not boundary.any():
        return math.nan
    values = image.astype(np.float64)
    gradient = np.hypot(ndimage.sobel(values, axis=0), ndimage.sobel(values, axis=1)) / _SOBEL_SCALE
    return float(gradient[boundary].mean())


def edge_intensity_contrast(image: np.ndarray, mask: np.ndarray, ring_width: int = EDGE_RING_WIDTH) -> float:
    """Mean grey level just outside the nodule minus mean grey level just inside it.

    The outer ring is the pixels outside the mask within Euclidean distance ``ring_width`` of a mask
    pixel; the inner ring is the mask pixels within Euclidean distance ``ring_width`` of a non-mask pixel
    of the image (the image border is not background). With the default of 3 px each ring is 3 pixels
    thick. The sign is outside minus inside: positive for a hypoechoic nodule (darker than the
    surrounding parenchyma, a suspicious TI-RADS feature), negative for a hyperechoic one; a mask holding
    50 inside 150 reads exactly +100. NaN when either ring is empty (empty mask, mask filling the image).
    """
    from scipy import ndimage

    ring_width = _check_ring_width(ring_width)
    image, mask = _as_pair(image, mask)
    if not mask.any() or mask.all():
        return math.nan
    # Dilating by the disc of integer offsets with norm <= w reaches exactly the pixels within Euclidean
    # distance w (as a distance transform would, at half the cost); outside the array is neither side.
    offsets = np.arange(-ring_width, ring_width + 1)
    disc = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= ring_width**2
    outer = ndimage.binary_dilation(mask, structure=disc) & ~mask
    inner = ndimage.binary_dilation(~mask, structure=disc) & mask
    values = image.astype(np.float64)
    return float(values[outer].mean() - values[inner].mean())


# ------------------------------------------------------------------------------------------------ pyradiomics
@lru_cache(maxsize=1)
def _extractor() -> Any:
    """The process's one pyradiomics extractor, our 8 features enabled, its logging quietened."""
    try:
        import radiomics
        from radiomics import featureextractor
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the thyroid radiomics targets need pyradiomics: pip install pyradiomics-bhklab SimpleITK"
        ) from err

    # pyradiomics logs every step at INFO and warns about settings: keep errors only.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    radiomics.setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(**dict(PYRADIOMICS_SETTINGS))
    extractor.disableAllFeatures()
    enabled: dict[str, list[str]] = {}
    for feature_class, feature in PYRADIOMICS_FEATURES.values():
        enabled.setdefault(feature_class, []).append(feature)
    extractor.enableFeaturesByName(**enabled)
    return extractor


def _pyradiomics_features(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """pyradiomics' values for ``image`` (float64) and ``mask`` (bool); NaN where it rejects the mask."""
    import SimpleITK as sitk

    extractor = _extractor()
    sitk_image = sitk.GetImageFromArray(image[np.newaxis])
    sitk_mask = sitk.GetImageFromArray(mask[np.newaxis].astype(np.uint8))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # e.g. "Mean of empty slice" when no two mask pixels touch: the value is NaN, as it should be.
            warnings.simplefilter("ignore", RuntimeWarning)
            result = extractor.execute(sitk_image, sitk_mask)
    except ValueError:
        # pyradiomics' mask checks: a single pixel, or a mask confined to one row or one column.
        return {name: math.nan for name in PYRADIOMICS_FEATURES}
    return {
        name: float(result[f"original_{feature_class}_{feature}"])
        for name, (feature_class, feature) in PYRADIOMICS_FEATURES.items()
    }


# ----------------------------------------------------------------------------------------------- public API
def compute_features(image: np.ndarray, mask: np.ndarray, *, ring_width: int = EDGE_RING_WIDTH) -> np.ndarray:
    """The 13 targets of one image, in :data:`FEATURE_NAMES` order, as float64 of shape ``(13,)``.

    ``image`` is the (H, W) grey-level image (uint8 for ultrasound; any real dtype is accepted) and
    ``mask`` the (H, W) nodule mask (non-zero = nodule). Features the mask cannot support are NaN (an
    empty mask gives all NaN); only malformed input (wrong dimensions, mismatched shapes) raises. The work
    is done on the nodule's bounding box plus a margin, which gives the same values as the whole image.
    """
    ring_width = _check_ring_width(ring_width)
    image, mask = _as_pair(image, mask)
    out = np.full(len(FEATURE_NAMES), np.nan, dtype=np.float64)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    # The edge features look at most ring_width px (distance rings) or 1 px (Sobel) beyond the mask.
    margin = ring_width + 2
    window = (
        slice(max(r0 - margin, 0), min(r1 + margin, mask.shape[0])),
        slice(max(c0 - margin, 0), min(c1 + margin, mask.shape[1])),
    )
    image_window = image[window].astype(np.float64)
    mask_window = mask[window]
    tight = (slice(r0, r1), slice(c0, c1))

    out[_INDEX["circularity"]] = circularity(mask[tight])
    out[_INDEX["ellipticity"]] = _ellipticity(rows, cols)
    out[_INDEX["aspect_ratio"]] = _aspect_ratio(rows, cols)
    out[_INDEX["edge_sharpness"]] = edge_sharpness(image_window, mask_window)
    out[_INDEX["edge_intensity_contrast"]] = edge_intensity_contrast(image_window, mask_window, ring_width)
    for name, value in _pyradiomics_features(image[tight].astype(np.float64), mask[tight]).items():
        out[_INDEX[name]] = value
    return out


def _batch_length(images: ArrayBatch, masks: ArrayBatch) -> int:
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or a sequence of (H, W) arrays, got shape {images.shape}")
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) or a sequence of (H, W) arrays, got shape {masks.shape}")
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    return len(images)


def _features_for_chunk(images: ArrayBatch, masks: ArrayBatch, ring_width: int) -> np.ndarray:
    """Worker entry point: the features of a contiguous run of samples."""
    return np.stack(
        [compute_features(im, m, ring_width=ring_width) for im, m in zip(images, masks, strict=True)]
    )


def _init_worker() -> None:
    # Each worker is one of `workers` processes: ITK's own thread pool would only oversubscribe the cores.
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _extractor()


def _progress(enabled: bool, total: int) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    from mtlbench.progress import counting_bar

    return counting_bar("radiomics", enabled, total)


def compute_features_batch(
    images: ArrayBatch,
    masks: ArrayBatch,
    workers: int | None = None,
    progress: bool = True,
    *,
    ring_width: int = EDGE_RING_WIDTH,
    chunk_size: int | None = None,
) -> np.ndarray:
    """:func:`compute_features` for every sample, as float64 of shape ``(N, 13)``.

    ``images`` and ``masks`` are (N, H, W) arrays or equal-length sequences of (H, W) arrays (sizes may differ
    between samples). ``workers=None`` uses ``os.cpu_count()`` processes; ``workers=1`` runs in this process.
    Samples are sent to a ``spawn`` process pool in contiguous chunks (``chunk_size``; default a quarter of a
    worker's share, at most 16), so a script that calls this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard; ``spawn`` rather than ``fork`` because a forked child inherits
    ITK's and torch's thread pools in whatever state the parent left them. ``progress=True`` shows a rich
    progress bar on stderr. The result does not depend on ``workers`` or ``chunk_size``.
    """
    ring_width = _check_ring_width(ring_width)
    n = _batch_length(images, masks)
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(
            f"Parameter `workers` should be a positive integer or None. Found `workers = {workers!r}`."
        )
    if chunk_size is None:
        chunk_size = max(1, min(16, math.ceil(n / (4 * workers))))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(
            f"Parameter `chunk_size` should be a positive integer. Found `chunk_size = {chunk_size!r}`."
        )
    out = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float64)
    if n == 0:
        return out
    bounds = [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    workers = min(int(workers), len(bounds))

    with _progress(progress, n) as advance:
        if workers == 1:
            for i in range(n):
                out[i] = compute_features(images[i], masks[i], ring_width=ring_width)
                advance(1)
            return out
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
            pending: dict[Future[np.ndarray], tuple[int, int]] = {
                pool.submit(_features_for_chunk, images[a:b], masks[a:b], ring_width): (a, b)
                for a, b in bounds
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        a, b = pending.pop(future)
                        out[a:b] = future.result()
                        advance(b - a)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return out
