"""A synthetic B-mode thyroid phantom: the suite's embedded default data set.

Each sample is one transverse scan of a thyroid lobe with one nodule whose appearance is drawn from sampled
ACR TI-RADS features, so the label (``tirads_level`` of those features) is correct by construction.

The image is built the way a scanner forms one (``spec/data.md``, "A synthetic phantom"):

1. an *echogenicity map* (mean backscatter power, parenchyma = 1): skin, subcutaneous fat, the strap
   muscles (darker, fibrous, near the top), the bright thyroid capsule, the parenchyma, the deep tissue
   and, in some scans, the carotid artery beside the lobe; then the nodule:

   - composition: solid; mixed (a few anechoic cystic spaces); spongiform (many small cystic spaces, >50 %);
     cystic (anechoic with a thin wall, sometimes a small mural solid part);
   - echogenicity (mean backscatter power) of the solid part relative to the parenchyma: hyper 4.5,
     iso 1.0 (coarser texture and a thin hypoechoic halo, as iso nodules are seen in practice), hypo 0.2,
     very hypo 0.05 (darker than the strap muscle at 0.12), anechoic fluid 0.004;
   - shape: depth/width ratio of the mask's bounding box < 0.9 (wider-than-tall) or > 1.1 (taller);
   - margin: smooth ellipse, ill-defined (soft edge), lobulated (smooth bulges), irregular (spiculated)
     or extrathyroidal extension (an irregular contour that crosses the capsule into the strap muscle);
   - echogenic foci: punctate (bright dots without shadow), peripheral rim (a bright arc on the anterior
     contour with a partial shadow), macrocalcification (bright blobs with an acoustic shadow beneath),
     comet-tail (a bright point with a tapering reverberation tail, in fluid);

2. an *attenuation map* (fluid attenuates little, calcification a lot), integrated along depth and
   partly undone by time-gain compensation: this yields posterior enhancement under cysts, acoustic
   shadows under calcifications and a mild darkening with depth;
3. *speckle*: complex Gaussian scatterers scaled by sqrt(echogenicity) and the attenuation, convolved with
   a Gaussian point-spread function longer laterally than axially, plus a faint electronic noise floor;
   the envelope (modulus) is log-compressed to ``dynamic_range_db`` and quantised to 8 bit.

Scans smaller than ``render_min_size`` are rendered at an integer multiple of the requested size and
block-averaged, as a real scan resized for a network would be; so cues stay visible at 64 px.

Determinism: sample ``i`` of ``generate_phantom(n, config)`` depends only on ``(config, i)``; its generator
is seeded with ``SeedSequence(config.seed).spawn(i + 1)[i]``, so growing ``n`` keeps the first samples.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy import ndimage

from .tirads import (
    AcrFeatures,
    Composition,
    EchogenicFoci,
    Echogenicity,
    Margin,
    Shape,
    tirads_level,
)

__all__ = [
    "ECHOGENICITY_POWER",
    "PhantomConfig",
    "PhantomSet",
    "generate_phantom",
    "render",
    "sample_acr_features",
    "sample_features_for_level",
    "sample_rng",
]

# Mean backscatter power relative to the thyroid parenchyma.
ECHOGENICITY_POWER: dict[Echogenicity, float] = {
    Echogenicity.ANECHOIC: 0.004,
    Echogenicity.HYPERECHOIC: 4.5,
    Echogenicity.ISOECHOIC: 1.0,
    Echogenicity.HYPOECHOIC: 0.2,
    Echogenicity.VERY_HYPOECHOIC: 0.05,
}
_STRAP_MUSCLE_POWER = 0.12  # very hypoechoic means darker than this
_FAT_POWER = 0.55
_DEEP_POWER = 0.3
_CAPSULE_POWER = 2.4
_SKIN_POWER = 3.0
_FLUID_POWER = ECHOGENICITY_POWER[Echogenicity.ANECHOIC]
_HALO_POWER = 0.03
_CALCIFICATION_POWER = 40.0

# Attenuation relative to parenchyma (per unit depth); calcification values are per 128 px of depth.
_FLUID_ATTENUATION = 0.02
_MUSCLE_ATTENUATION = 1.2
# Calcifications: nepers of echo amplitude lost across the whole calcification (shadow depth).
_MACRO_SHADOW_NEPERS = (1.0, 1.8)
_RIM_SHADOW_NEPERS = 0.6

_TALLER_MIN_RATIO = 1.1  # mask bounding-box height / width
_WIDER_MAX_RATIO = 0.9


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the synthetic phantom. Every field is plain data; the set is a function of it.

    Lengths given as fractions are fractions of the image side, so the anatomy scales with ``size``.
    """

    size: int = 128
    seed: int = 0
    level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)  # target shares of TR1..TR5
    dynamic_range_db: float = 50.0
    nodule_width: tuple[float, float] = (0.15, 0.45)  # nodule width as a fraction of the image width
    psf_axial: float = 0.007  # Gaussian PSF sigma, fraction of the image side (axial resolution)
    psf_lateral: float = 0.013  # lateral sigma; longer than axial, as for a linear probe
    attenuation_np: float = 4.0  # tissue attenuation over the image depth, nepers of echo amplitude
    tgc_compensation: tuple[float, float] = (0.85, 1.0)  # fraction of that attenuation the TGC undoes
    gain_jitter_db: float = 2.0  # uniform +- overall gain change per scan
    noise_floor_db: float = -30.0  # electronic noise power relative to parenchyma
    compounding: int = 2  # independent speckle patterns averaged (spatial compounding)
    carotid_probability: float = 0.5
    render_min_size: int = 128  # smaller scans are rendered at a multiple of size and block-averaged
    field_of_view_mm: float = 40.0  # image width and depth, for diameters in mm

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_weights", tuple(float(w) for w in self.level_weights))
        object.__setattr__(self, "nodule_width", tuple(float(w) for w in self.nodule_width))
        object.__setattr__(self, "tgc_compensation", tuple(float(w) for w in self.tgc_compensation))
        if int(self.size) != self.size or self.size < 16:
            raise ValueError(f"Parameter `size` should be an integer >= 16. Found `size = {self.size!r}`.")
        _check_level_weights(self.level_weights)
        lo, hi = self.nodule_width
        if not (len(self.nodule_width) == 2 and 0.08 <= lo <= hi <= 0.5):
            raise ValueError(
                "Parameter `nodule_width` should be (lo, hi) with 0.08 <= lo <= hi <= 0.5. "
                f"Found `nodule_width = {self.nodule_width}`."
            )
        if not 10.0 <= self.dynamic_range_db <= 100.0:
            raise ValueError(
                "Parameter `dynamic_range_db` should be in [10, 100]. "
                f"Found `dynamic_range_db = {self.dynamic_range_db}`."
            )
        for name in ("psf_axial", "psf_lateral"):
            value = getattr(self, name)
            if not 0.0 < value <= 0.05:
                raise ValueError(f"Parameter `{name}` should be in (0, 0.05]. Found `{name} = {value}`.")
        if self.attenuation_np < 0:
            raise ValueError(
                f"Parameter `attenuation_np` should be >= 0. Found `attenuation_np = {self.attenuation_np}`."
            )
        lo, hi = self.tgc_compensation
        if not (len(self.tgc_compensation) == 2 and 0.0 <= lo <= hi <= 1.5):
            raise ValueError(
                "Parameter `tgc_compensation` should be (lo, hi) with 0 <= lo <= hi <= 1.5. "
                f"Found `tgc_compensation = {self.tgc_compensation}`."
            )
        if int(self.compounding) != self.compounding or not 1 <= self.compounding <= 16:
            raise ValueError(
                "Parameter `compounding` should be an integer in 1..16. "
                f"Found `compounding = {self.compounding!r}`."
            )
        if self.gain_jitter_db < 0:
            raise ValueError(
                f"Parameter `gain_jitter_db` should be >= 0. Found `gain_jitter_db = {self.gain_jitter_db}`."
            )
        if not 0.0 <= self.carotid_probability <= 1.0:
            raise ValueError(
                "Parameter `carotid_probability` should be in [0, 1]. "
                f"Found `carotid_probability = {self.carotid_probability}`."
            )
        if int(self.render_min_size) != self.render_min_size or self.render_min_size < 1:
            raise ValueError(
                "Parameter `render_min_size` should be a positive integer. "
                f"Found `render_min_size = {self.render_min_size!r}`."
            )
        if not self.field_of_view_mm > 0:
            raise ValueError(
                "Parameter `field_of_view_mm` should be > 0. "
                f"Found `field_of_view_mm = {self.field_of_view_mm}`."
            )


@dataclass
class PhantomSet:
    """A generated set: images, nodule masks, TI-RADS levels and the ACR features behind them.

    ``points`` holds per-category ACR points (composition, echogenicity, shape, margin, echogenic foci);
    ``max_diameter_mm`` is the largest diameter of each mask (for :func:`tirads.management`).
    """

    images: np.ndarray  # (N, H, W) uint8
    masks: np.ndarray  # (N, H, W) uint8 in {0, 1}
    levels: np.ndarray  # (N,) int64 in 1..5
    features: list[AcrFeatures]
    points: np.ndarray  # (N, 5) int64
    max_diameter_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) float64
    config: PhantomConfig | None = None

    def __len__(self) -> int:
        return len(self.levels)


def _check_level_weights(level_weights: Sequence[float]) -> np.ndarray:
    weights = np.asarray(level_weights, dtype=np.float64)
    if weights.shape != (5,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            "Parameter `level_weights` should be 5 finite non-negative weights (TR1..TR5) with a positive "
            f"sum. Found `level_weights = {tuple(level_weights)}`."
        )
    return weights / weights.sum()


# --------------------------------------------------------------------------------------------------------
# Feature sampling
# --------------------------------------------------------------------------------------------------------


def _prior_weight(f: AcrFeatures) -> float:
    """Prior probability (unnormalised) of a feature combination; 0 for combinations we never draw.

    Cystic and spongiform nodules are drawn with benign-looking other features (ACR: reconsider
    spongiform when margins or foci are suspicious); ``anechoic`` is reserved for cystic nodules, as in
    the ACR lexicon, so no non-cystic nodule totals 1 point.
    """
    benign = f.composition in (Composition.CYSTIC, Composition.SPONGIFORM)
    if benign:
        composition = 0.5
        echo = {
            Composition.CYSTIC: {Echogenicity.ANECHOIC: 1.0},
            Composition.SPONGIFORM: {Echogenicity.ISOECHOIC: 0.7, Echogenicity.HYPERECHOIC: 0.3},
        }[f.composition].get(f.echogenicity, 0.0)
        shape = 0.1 if f.shape is Shape.TALLER_THAN_WIDE else 0.9
        margin = {Margin.SMOOTH: 0.7, Margin.ILL_DEFINED: 0.3}.get(f.margin, 0.0)
        foci_p = {EchogenicFoci.COMET_TAIL: 0.35}
    else:
        composition = {Composition.MIXED: 0.4, Composition.SOLID: 0.6}[f.composition]
        echo = {
            Echogenicity.HYPERECHOIC: 0.15,
            Echogenicity.ISOECHOIC: 0.3,
            Echogenicity.HYPOECHOIC: 0.4,
            Echogenicity.VERY_HYPOECHOIC: 0.15,
        }.get(f.echogenicity, 0.0)
        shape = 0.3 if f.shape is Shape.TALLER_THAN_WIDE else 0.7
        margin = {
            Margin.SMOOTH: 0.35,
            Margin.ILL_DEFINED: 0.15,
            Margin.LOBULATED: 0.2,
            Margin.IRREGULAR: 0.2,
            Margin.EXTRATHYROIDAL_EXTENSION: 0.1,
        }[f.margin]
        foci_p = {
            EchogenicFoci.MACROCALCIFICATION: 0.2,
            EchogenicFoci.PERIPHERAL_RIM: 0.12,
            EchogenicFoci.PUNCTATE: 0.28,
        }
        if f.composition is Composition.MIXED:  # comet tails sit in fluid (colloid)
            foci_p[EchogenicFoci.COMET_TAIL] = 0.2
    foci = 1.0
    for kind in (
        EchogenicFoci.COMET_TAIL,
        EchogenicFoci.MACROCALCIFICATION,
        EchogenicFoci.PERIPHERAL_RIM,
        EchogenicFoci.PUNCTATE,
    ):
        p = foci_p.get(kind, 0.0)
        foci *= p if kind in f.foci else 1.0 - p
    return composition * echo * shape * margin * foci


@functools.cache
def _feature_table() -> tuple[tuple[tuple[AcrFeatures, ...], np.ndarray], ...]:
    """For each level 1..5, every feature combination of that level and its conditional probability.

    Drawing from it is exactly rejection sampling from the prior until the level matches, in O(1).
    """
    kinds = (
        EchogenicFoci.COMET_TAIL,
        EchogenicFoci.MACROCALCIFICATION,
        EchogenicFoci.PERIPHERAL_RIM,
        EchogenicFoci.PUNCTATE,
    )
    per_level: list[list[tuple[AcrFeatures, float]]] = [[] for _ in range(5)]
    for composition, echo, shape, margin, *flags in itertools.product(
        Composition, Echogenicity, Shape, Margin, *([(False, True)] * len(kinds))
    ):
        foci = tuple(kind for kind, on in zip(kinds, flags, strict=True) if on)
        features = AcrFeatures(composition, echo, shape, margin, foci)
        weight = _prior_weight(features)
        if weight > 0:
            per_level[tirads_level(features) - 1].append((features, weight))
    table = []
    for level, rows in enumerate(per_level, start=1):
        if not rows:  # pragma: no cover - guarded by the prior above
            raise RuntimeError(f"The phantom prior cannot produce TR{level}.")
        probs = np.array([w for _, w in rows])
        table.append((tuple(f for f, _ in rows), probs / probs.sum()))
    return tuple(table)


def sample_features_for_level(rng: np.random.Generator, level: int) -> AcrFeatures:
    """Draw ACR features from the phantom's prior conditioned on ``tirads_level(features) == level``."""
    if isinstance(level, bool) or int(level) != level or not 1 <= int(level) <= 5:
        raise ValueError(f"Parameter `level` should be an integer in 1..5. Found `level = {level!r}`.")
    candidates, probs = _feature_table()[int(level) - 1]
    return candidates[int(rng.choice(len(candidates), p=probs))]


def sample_acr_features(
    rng: np.random.Generator, level_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0)
) -> AcrFeatures:
    """Draw ACR features whose TI-RADS level follows ``level_weights`` (shares of TR1..TR5).

    The level is drawn first, then the features from the prior restricted to that level (equivalent to
    rejection sampling of features until the level matches the drawn one).
    """
    shares = _check_level_weights(level_weights)
    level = int(rng.choice(5, p=shares)) + 1
    return sample_features_for_level(rng, level)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a set seeded with ``seed``: ``SeedSequence(seed).spawn`` child."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


# --------------------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------------------

_CONTOUR_SAMPLES = 1024


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@functools.lru_cache(maxsize=8)
def _gaussian_transfers(
    size: int, sigmas: tuple[tuple[float, float], ...]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Gaussian low-pass transfer functions (rfft layout) and the indices where they exceed 1e-4."""
    fy = np.fft.fftfreq(size)[None, :, None]
    fx = np.fft.rfftfreq(size)[None, None, :]
    sy = np.array([sig[0] for sig in sigmas])[:, None, None]
    sx = np.array([sig[1] for sig in sigmas])[:, None, None]
    transfer = np.exp(-2.0 * math.pi**2 * ((fy * sy) ** 2 + (fx * sx) ** 2)).astype(np.float32)
    return transfer, np.nonzero(transfer > 1e-4)


def _smooth_fields(rng: np.random.Generator, size: int, sigmas: Sequence[tuple[float, float]]) -> np.ndarray:
    """Unit-variance Gaussian random fields (one per (sigma_y, sigma_x) in pixels), periodic.

    White noise has independent complex Gaussian Fourier coefficients, so the coefficients are drawn
    directly and low-pass filtered: one inverse FFT, no forward one.
    """
    transfer, support = _gaussian_transfers(size, tuple((float(a), float(b)) for a, b in sigmas))
    # Only coefficients the low-pass filter keeps are drawn (same statistics, far fewer normals).
    draws = rng.standard_normal((2, len(support[0])), dtype=np.float32)
    spectrum = np.zeros(transfer.shape, dtype=np.complex64)
    spectrum[support] = (draws[0] + 1j * draws[1]) * transfer[support]
    fields = scipy.fft.irfft2(spectrum, s=(size, size))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    fields /= fields.std(axis=(1, 2), keepdims=True) + np.float32(1e-12)
    return fields.astype(np.float32, copy=False)


def _lognormal(field_: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(sigma * field_ - 0.5 * sigma * sigma)


def _low_freq_curve(rng: np.random.Generator, size: int, base: float, amplitude: float) -> np.ndarray:
    """A gently curving boundary y(x) in pixels: ``base`` plus a few random low-frequency cosines."""
    x = np.arange(size, dtype=np.float64) / size
    curve = np.full(size, base, dtype=np.float64)
    for k in (1, 2, 3):
        curve += amplitude / k * rng.uniform(-1, 1) * np.cos(math.pi * k * x + rng.uniform(0, 2 * math.pi))
    return curve


def _contour_radius(rng: np.random.Generator, margin: Margin) -> np.ndarray:
    """Relative radius r(theta) of the nodule contour on ``_CONTOUR_SAMPLES`` angles in [-pi, pi)."""
    theta = np.linspace(-math.pi, math.pi, _CONTOUR_SAMPLES, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3):
        r += rng.uniform(0.0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))

    def angular_distance(centre: float) -> np.ndarray:
        return np.abs((theta - centre + math.pi) % (2 * math.pi) - math.pi)

    if margin is Margin.LOBULATED:
        for centre in rng.uniform(-math.pi, math.pi) + np.linspace(0, 2 * math.pi, rng.integers(3, 6), False):
            centre += rng.uniform(-0.3, 0.3)
            width = rng.uniform(0.25, 0.45)
            r += rng.uniform(0.12, 0.22) * np.exp(-0.5 * (angular_distance(centre) / width) ** 2)
        r -= 0.1
    elif margin in (Margin.IRREGULAR, Margin.EXTRATHYROIDAL_EXTENSION):
        k = np.arange(5, 25)
        amps = rng.normal(0.0, 0.05, k.size) * np.sqrt(5.0 / k)
        phases = rng.uniform(0, 2 * math.pi, k.size)
        r += (amps[:, None] * np.cos(k[:, None] * theta[None, :] + phases[:, None])).sum(axis=0)
        n_spikes = int(rng.integers(6, 13))
        for centre in rng.uniform(-math.pi, math.pi, n_spikes):
            width = rng.uniform(0.05, 0.1)
            r += rng.uniform(0.15, 0.4) * np.clip(1.0 - angular_distance(centre) / width, 0.0, None)
    return np.clip(r, 0.55, None)


_FAR = np.float32(1e3)  # q of pixels too far from the nodule to matter


def _contour_q(
    size: int, cx: float, cy: float, a: float, b: float, tilt: float, radius: np.ndarray
) -> np.ndarray:
    """q = (elliptic radius) / r(theta) per pixel: < 1 inside the contour, 1 on it.

    Computed in a window reaching 1.6x the contour's extent (enough for the soft ill-defined edge);
    pixels outside it get a large q.
    """
    q = np.full((size, size), _FAR, dtype=np.float32)
    reach = 1.6 * max(a, b) * float(radius.max()) + 2.0
    r0, r1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 1)
    c0, c1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 1)
    if r0 >= r1 or c0 >= c1:
        return q
    yy, xx = _grid(size)
    dx = xx[r0:r1, c0:c1] - np.float32(cx)
    dy = yy[r0:r1, c0:c1] - np.float32(cy)
    c, s = math.cos(tilt), math.sin(tilt)
    u = (dx * c + dy * s) / np.float32(a)
    v = (-dx * s + dy * c) / np.float32(b)
    theta = np.arctan2(v, u)
    index = ((theta + math.pi) * (_CONTOUR_SAMPLES / (2 * math.pi))).astype(np.int32) % _CONTOUR_SAMPLES
    q[r0:r1, c0:c1] = np.hypot(u, v) / radius.astype(np.float32)[index]
    return q


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape
    return image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _max_diameter_px(mask: np.ndarray) -> float:
    """Largest distance between two pixel centres of the mask boundary (+1 px for the pixel extent)."""
    boundary = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(boundary).astype(np.float64)
    if len(pts) == 0:
        return 0.0
    if len(pts) > 400:
        pts = pts[:: math.ceil(len(pts) / 400)]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    return float(math.sqrt(d2.max())) + 1.0


def _lower_envelope(columns: np.ndarray, values: np.ndarray, size: int, curvature: float) -> np.ndarray:
    """min_j (values_j + curvature * (x - columns_j)^2): a smooth bulge that hugs the given points."""
    x = np.arange(size, dtype=np.float64)[:, None]
    return (values[None, :] + curvature * (x - columns[None, :]) ** 2).min(axis=1)


@dataclass
class _Nodule:
    cx: float
    cy: float
    a: float
    b: float
    tilt: float
    radius: np.ndarray  # contour table
    q: np.ndarray  # rho / r(theta): < 1 inside the contour
    mask: np.ndarray  # bool at render resolution


@dataclass
class _Anatomy:
    skin: float
    muscle_top: np.ndarray  # y(x)
    capsule: np.ndarray  # y(x), anterior thyroid capsule
    posterior: np.ndarray  # y(x), posterior capsule
    carotid: tuple[float, float, float] | None  # (cx, cy, radius)
    fascia: np.ndarray | None  # y(x) of a fascia line between the two strap muscles


def _sample_anatomy(rng: np.random.Generator, size: int, config: PhantomConfig) -> _Anatomy:
    s = float(size)
    skin = rng.uniform(0.02, 0.035) * s
    muscle_top = _low_freq_curve(rng, size, rng.uniform(0.07, 0.1) * s, 0.02 * s)
    capsule = _low_freq_curve(rng, size, rng.uniform(0.2, 0.26) * s, 0.03 * s)
    capsule = np.maximum(capsule, muscle_top + 0.06 * s)
    posterior = _low_freq_curve(rng, size, rng.uniform(0.8, 0.88) * s, 0.04 * s)
    carotid = None
    if rng.random() < config.carotid_probability:
        radius = rng.uniform(0.08, 0.11) * s
        offset = rng.uniform(-0.02, 0.07) * s
        cx = offset if rng.random() < 0.5 else s - 1 - offset
        carotid = (cx, rng.uniform(0.5, 0.66) * s, radius)
    fascia = None
    if rng.random() < 0.6:
        fascia = muscle_top + rng.uniform(0.4, 0.6) * (capsule - muscle_top)
    return _Anatomy(skin, muscle_top, capsule, posterior, carotid, fascia)


def _sample_nodule(
    rng: np.random.Generator,
    features: AcrFeatures,
    anatomy: _Anatomy,
    size: int,
    factor: int,
    config: PhantomConfig,
) -> _Nodule:
    """Place and outline the nodule; retry until the output-size mask obeys shape and border rules."""
    s = float(size)
    out = size // factor
    taller = features.shape is Shape.TALLER_THAN_WIDE
    ete = features.margin is Margin.EXTRATHYROIDAL_EXTENSION
    w_lo, w_hi = config.nodule_width
    if features.composition is Composition.SPONGIFORM:  # room for a dozen or more visible microcysts
        w_lo = min(w_hi, max(w_lo, 0.5 * (w_lo + w_hi)))
    border = max(2, math.ceil(0.025 * out))
    x_lo, x_hi = 0.04 * s, 0.96 * s
    if anatomy.carotid is not None:
        ccx, _, cr = anatomy.carotid
        if ccx < s / 2:
            x_lo = max(x_lo, ccx + cr + 0.03 * s)
        else:
            x_hi = min(x_hi, ccx - cr - 0.03 * s)
    last: _Nodule | None = None
    for attempt in range(60):
        shrink = 0.985**attempt
        if taller:
            width = rng.uniform(w_lo, min(w_hi, 0.34)) * s * shrink
            ratio = rng.uniform(1.25, 1.75)
        else:
            width = rng.uniform(w_lo, w_hi) * s * shrink
            ratio = rng.uniform(0.45, 0.8)
        a, b = width / 2, ratio * width / 2
        if 2 * b > 0.6 * s:
            a, b = a * 0.3 * s / b, 0.3 * s
        tilt = rng.uniform(-0.12, 0.12)
        radius = _contour_radius(rng, features.margin)
        rmax = float(radius.max())
        a_ext, b_ext = a * rmax, b * rmax
        if x_hi - x_lo <= 2 * a_ext:
            continue
        cx = rng.uniform(x_lo + a_ext, x_hi - a_ext)
        col = int(min(max(round(cx), 0), size - 1))
        if ete:
            top = anatomy.capsule[col] - rng.uniform(0.15, 0.3) * 2 * b
            cy = top + b
        else:
            y_lo, y_hi = anatomy.capsule[col] - 0.02 * s + b_ext, 0.94 * s - b_ext
            if y_hi <= y_lo:
                continue
            cy = rng.uniform(y_lo, min(y_hi, y_lo + 0.35 * s))
        q = _contour_q(size, cx, cy, a, b, tilt, radius)
        mask = q < 1.0
        last = _Nodule(cx, cy, a, b, tilt, radius, q, mask)
        small = _block_mean(mask.astype(np.float32), factor) >= 0.5
        box = _bbox(small)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        if r0 < border or c0 < border or r1 > out - 1 - border or c1 > out - 1 - border:
            continue
        box_ratio = (r1 - r0 + 1) / (c1 - c0 + 1)
        if (taller and box_ratio <= _TALLER_MIN_RATIO) or (not taller and box_ratio >= _WIDER_MAX_RATIO):
            continue
        if ete:
            yy, _ = _grid(size)
            above = mask & (yy < anatomy.capsule[None, :].astype(np.float32) - 0.01 * s)
            if above.sum() < 0.05 * mask.sum():
                continue
        return last
    raise RuntimeError(  # pragma: no cover - the ranges above leave ample room
        f"Could not place a nodule for {features} at size {out} after 60 attempts (last: {last})."
    )


def _adapt_capsules(anatomy: _Anatomy, nodule: _Nodule, size: int, extrathyroidal: bool) -> None:
    """Let the lobe bulge around the nodule so it stays inside the capsule (unless it breaks through)."""
    s = float(size)
    cols = np.flatnonzero(nodule.mask.any(axis=0))
    if cols.size == 0:
        return
    sub = nodule.mask[:, cols]
    first = sub.argmax(axis=0).astype(np.float64)
    last = (size - 1 - sub[::-1].argmax(axis=0)).astype(np.float64)
    curvature = 4.0 / s
    if not extrathyroidal:
        anterior = _lower_envelope(cols.astype(np.float64), first - 0.03 * s, size, curvature)
        anatomy.capsule = np.minimum(anatomy.capsule, anterior)
        anatomy.muscle_top = np.minimum(anatomy.muscle_top, anatomy.capsule - 0.04 * s)
        if anatomy.fascia is not None:
            anatomy.fascia = anatomy.muscle_top + 0.5 * (anatomy.capsule - anatomy.muscle_top)
    posterior = -_lower_envelope(cols.astype(np.float64), -(last + 0.03 * s), size, curvature)
    anatomy.posterior = np.maximum(anatomy.posterior, posterior)


def _band(yy: np.ndarray, curve: np.ndarray, half_width: float) -> np.ndarray:
    """Soft line of the given half width (pixels) along y = curve(x)."""
    return np.exp(-0.5 * ((yy - curve[None, :].astype(np.float32)) / np.float32(half_width)) ** 2)


def _background(anatomy: _Anatomy, size: int, textures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity and relative attenuation maps of the neck without the nodule."""
    s = float(size)
    yy, xx = _grid(size)
    iso, fibre, coarse = textures[0], textures[1], textures[2]
    capsule = anatomy.capsule[None, :].astype(np.float32)
    posterior = anatomy.posterior[None, :].astype(np.float32)
    muscle_top = anatomy.muscle_top[None, :].astype(np.float32)

    power = np.where(yy < muscle_top, _FAT_POWER * _lognormal(coarse, 0.5), 0.0).astype(np.float32)
    in_muscle = (yy >= muscle_top) & (yy < capsule)
    power += np.where(in_muscle, _STRAP_MUSCLE_POWER * _lognormal(fibre, 0.45), 0.0)
    in_thyroid = (yy >= capsule) & (yy < posterior)
    power += np.where(in_thyroid, _lognormal(iso, 0.15), 0.0)
    power += np.where(yy >= posterior, _DEEP_POWER * _lognormal(fibre, 0.5), 0.0)

    line = max(0.6, 0.006 * s)
    power += _SKIN_POWER * np.exp(-0.5 * (yy / max(1.0, anatomy.skin)) ** 2)
    power += 1.2 * _band(yy, anatomy.muscle_top, line)
    if anatomy.fascia is not None:
        power += 0.8 * _band(yy, anatomy.fascia, line)
    power += _CAPSULE_POWER * _band(yy, anatomy.capsule, line)
    power += 1.4 * _band(yy, anatomy.posterior, line)

    attenuation = np.where(in_muscle, _MUSCLE_ATTENUATION, 1.0).astype(np.float32)
    if anatomy.carotid is not None:
        ccx, ccy, radius = anatomy.carotid
        dist = np.hypot(xx - np.float32(ccx), yy - np.float32(ccy))
        lumen = dist < radius
        wall = np.exp(-0.5 * ((dist - np.float32(radius)) / np.float32(max(0.7, 0.01 * s))) ** 2)
        power = np.where(lumen, _FLUID_POWER, power) + 2.0 * wall
        attenuation = np.where(lumen, _FLUID_ATTENUATION, attenuation)
    return power, attenuation


def _fill_nodule(
    rng: np.random.Generator,
    features: AcrFeatures,
    nodule: _Nodule,
    power: np.ndarray,
    attenuation: np.ndarray,
    size: int,
    textures: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the nodule into the maps; returns power, relative attenuation and calcification nepers/px."""
    s = float(size)
    yy, xx = _grid(size)
    q = nodule.q
    mean_radius = 0.5 * (nodule.a + nodule.b)
    px = 1.0 / mean_radius  # one pixel in units of q, roughly

    # Weight of the nodule against the background: anti-aliased edge, wide ramp when ill-defined.
    soft = (0.035 * s if features.margin is Margin.ILL_DEFINED else 0.7) / mean_radius
    weight = np.clip((1.0 - q) / (2 * soft) + 0.5, 0.0, 1.0)

    echo = features.echogenicity
    solid_power = ECHOGENICITY_POWER[echo] if echo is not Echogenicity.ANECHOIC else 1.0
    if features.composition is Composition.SPONGIFORM:  # bright septa between the microcysts
        solid_power *= 1.6
    grain = 0.5 if echo is Echogenicity.ISOECHOIC else 0.2
    nodule_power = solid_power * _lognormal(textures[3], grain)

    # Thin hypoechoic halo just inside the contour: always for iso nodules, a third of the time for hyper.
    halo = echo is Echogenicity.ISOECHOIC or (echo is Echogenicity.HYPERECHOIC and rng.random() < 0.3)
    halo = halo and features.composition is not Composition.SPONGIFORM
    if halo:
        thickness = max(1.5, 0.028 * s) * px
        halo_w = np.clip((q - (1.0 - thickness)) / (0.5 * px) + 0.5, 0.0, 1.0) * (q < 1.0 + soft)
        nodule_power = nodule_power * (1 - halo_w) + _HALO_POWER * halo_w

    # Cystic spaces.
    wall = max(1.0, 0.015 * s) * px
    fluid = np.zeros(q.shape, dtype=bool)
    composition = features.composition
    inner = q < 1.0 - wall
    if composition is Composition.CYSTIC:
        fluid = inner.copy()
        if rng.random() < 0.5:  # a small mural solid part
            angle = rng.uniform(-math.pi, math.pi)
            r = rng.uniform(0.2, 0.32) * mean_radius
            mx = nodule.cx + 0.85 * nodule.a * math.cos(angle)
            my = nodule.cy + 0.85 * nodule.b * math.sin(angle)
            fluid &= np.hypot(xx - np.float32(mx), yy - np.float32(my)) > r
    elif composition is Composition.SPONGIFORM:
        area = math.pi * nodule.a * nodule.b
        cell = min(max(math.sqrt(area / rng.uniform(8, 12)), 0.05 * s), 0.09 * s)
        oy, ox = rng.uniform(0, cell, 2)
        gy = np.floor((yy - oy) / cell).astype(np.int32)
        gx = np.floor((xx - ox) / cell).astype(np.int32)
        n_cells = math.ceil(size / cell) + 2
        jitter = rng.uniform(-0.1, 0.1, (2, n_cells, n_cells)) * cell
        radii = rng.uniform(0.4, 0.5, (n_cells, n_cells)) * cell
        gy_c, gx_c = np.clip(gy + 1, 0, n_cells - 1), np.clip(gx + 1, 0, n_cells - 1)
        centre_y = oy + (gy + 0.5) * cell + jitter[0][gy_c, gx_c]
        centre_x = ox + (gx + 0.5) * cell + jitter[1][gy_c, gx_c]
        fluid = inner & (np.hypot(yy - centre_y, xx - centre_x) < radii[gy_c, gx_c])
    elif composition is Composition.MIXED:
        # One to three cystic spaces covering 30-65 % of the nodule (the best of a few draws).
        area = max(1, int(nodule.mask.sum()))
        best, best_miss = fluid, math.inf
        for _ in range(8):
            fluid = np.zeros(q.shape, dtype=bool)
            for _ in range(int(rng.integers(1, 4))):
                ang, dist = rng.uniform(-math.pi, math.pi), rng.uniform(0.0, 0.45)
                hx = nodule.cx + dist * nodule.a * math.cos(ang)
                hy = nodule.cy + dist * nodule.b * math.sin(ang)
                ra, rb = rng.uniform(0.4, 0.7) * nodule.a, rng.uniform(0.4, 0.7) * nodule.b
                fluid |= ((xx - np.float32(hx)) / np.float32(ra)) ** 2 + (
                    (yy - np.float32(hy)) / np.float32(rb)
                ) ** 2 < 1.0
            fluid &= inner
            share = fluid.sum() / area
            miss = max(0.3 - share, share - 0.65, 0.0)
            if miss < best_miss:
                best, best_miss = fluid, miss
            if miss == 0.0:
                break
        fluid = best

    fluid_w = ndimage.gaussian_filter(fluid.astype(np.float32), 0.6) if fluid.any() else None
    if fluid_w is not None:
        nodule_power = nodule_power * (1 - fluid_w) + _FLUID_POWER * fluid_w
    power = power * (1 - weight) + nodule_power * weight
    attenuation = np.where(fluid, _FLUID_ATTENUATION, attenuation)

    # Echogenic foci.
    solid_inside = (q < 0.85) & ~fluid
    calcification = np.zeros(q.shape, dtype=np.float32)
    if EchogenicFoci.PUNCTATE in features.foci:
        candidates = np.flatnonzero(solid_inside)
        if candidates.size == 0:
            candidates = np.flatnonzero(q < 0.85)
        n_dots = int(np.clip(round(candidates.size / (0.004 * s * s) * 1.5), 3, 9))
        chosen = rng.choice(candidates, size=min(n_dots, candidates.size), replace=False)
        dots = np.zeros(q.shape, dtype=np.float32)
        dots.flat[chosen] = 1.0
        sigma = max(0.5, 0.007 * s)
        dots = ndimage.gaussian_filter(dots, sigma) * np.float32(2 * math.pi * sigma * sigma)
        power += 1.5 * _CALCIFICATION_POWER * dots
    if EchogenicFoci.PERIPHERAL_RIM in features.foci:
        theta = np.arctan2(yy - np.float32(nodule.cy), xx - np.float32(nodule.cx))
        centre = -math.pi / 2 + rng.uniform(-0.5, 0.5)
        span = rng.uniform(1.7, 3.6)
        in_arc = np.abs((theta - centre + math.pi) % (2 * math.pi) - math.pi) < span / 2
        thickness = max(1.3, 0.018 * s) * px
        rim = in_arc & (q < 1.0) & (q > 1.0 - thickness)
        power = np.where(rim, _CALCIFICATION_POWER, power)
        calcification += rim * np.float32(_RIM_SHADOW_NEPERS / max(1.0, thickness / px))
    if EchogenicFoci.MACROCALCIFICATION in features.foci:
        for _ in range(int(rng.integers(1, 3))):
            ang, dist = rng.uniform(-math.pi, math.pi), rng.uniform(0.0, 0.55)
            bx = nodule.cx + dist * nodule.a * math.cos(ang)
            by = nodule.cy + dist * nodule.b * math.sin(ang)
            ra = min(max(rng.uniform(0.25, 0.4) * nodule.a, 0.02 * s), 0.06 * s)
            rb = max(rng.uniform(0.45, 0.75) * ra, 0.012 * s)
            blob = ((xx - np.float32(bx)) / np.float32(ra)) ** 2 + (
                (yy - np.float32(by)) / np.float32(rb)
            ) ** 2
            blob = (blob < 1.0) & (q < 0.95)
            power = np.where(blob, _CALCIFICATION_POWER, power)
            calcification += blob * np.float32(rng.uniform(*_MACRO_SHADOW_NEPERS) / max(1.0, 2 * rb))
    if EchogenicFoci.COMET_TAIL in features.foci:
        source = fluid if fluid.any() else (q < 0.8)
        candidates = np.flatnonzero(source)
        for index in rng.choice(
            candidates, size=min(int(rng.integers(1, 4)), candidates.size), replace=False
        ):
            fy, fx = divmod(int(index), size)
            length = rng.uniform(0.04, 0.08) * s
            dy = yy - np.float32(fy)
            width = np.maximum(0.5, max(0.8, 0.01 * s) * (1 - np.clip(dy / np.float32(length), 0, 1)))
            tail = np.exp(-0.5 * ((xx - np.float32(fx)) / width) ** 2) * np.exp(
                -np.clip(dy, 0, None) / length
            )
            tail *= (dy >= -0.8) & (dy < 1.5 * length)
            power += 0.5 * _CALCIFICATION_POWER * tail
    return power, attenuation, calcification


@functools.lru_cache(maxsize=32)
def _psf_energy(sigma_y: float, sigma_x: float) -> float:
    """Sum of squared taps of the discrete Gaussian PSF (speckle power gain of the filter)."""
    half = math.ceil(4 * max(sigma_y, sigma_x)) + 2
    delta = np.zeros((2 * half + 1, 2 * half + 1))
    delta[half, half] = 1.0
    h = ndimage.gaussian_filter(delta, (sigma_y, sigma_x))
    return float((h**2).sum())


def render(
    features: AcrFeatures, size: int, rng: np.random.Generator, config: PhantomConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One B-mode scan of a nodule with the given ACR features: ``(image uint8 (H, W), mask uint8 {0,1})``.

    All randomness (anatomy, placement, contour, texture, speckle) comes from ``rng``. ``config``
    supplies the imaging settings; its ``size`` and ``seed`` are ignored here.
    """
    config = config or PhantomConfig()
    if int(size) != size or size < 16:
        raise ValueError(f"Parameter `size` should be an integer >= 16. Found `size = {size!r}`.")
    size = int(size)
    factor = max(1, math.ceil(config.render_min_size / size))
    big = size * factor
    s = float(big)

    anatomy = _sample_anatomy(rng, big, config)
    nodule = _sample_nodule(rng, features, anatomy, big, factor, config)
    _adapt_capsules(anatomy, nodule, big, features.margin is Margin.EXTRATHYROIDAL_EXTENSION)
    textures = _smooth_fields(
        rng,
        big,
        [(s / 14, s / 14), (0.012 * s, 0.08 * s), (0.04 * s, 0.06 * s), (s / 40, s / 40)],
    )
    power, attenuation = _background(anatomy, big, textures)
    power, attenuation, calcification = _fill_nodule(rng, features, nodule, power, attenuation, big, textures)

    # Depth attenuation of the echo amplitude, partly undone by time-gain compensation.
    tgc = rng.uniform(*config.tgc_compensation)
    yy, _ = _grid(big)
    shadow = np.cumsum(calcification, axis=0) - calcification  # a calcification shadows what lies below
    log_gain = config.attenuation_np / s * (tgc * yy - np.cumsum(attenuation, axis=0)) - shadow
    # The electronic noise floor joins the scatterer power, so the PSF band-limits it too.
    amplitude = np.sqrt(power * np.exp(2 * log_gain) + np.float32(10 ** (config.noise_floor_db / 10)))

    # Spatial compounding: the displayed power is the mean of `compounding` independent speckle patterns.
    sigma = (config.psf_axial * s, config.psf_lateral * s)
    energy = _psf_energy(*sigma)
    k = config.compounding
    scatter = rng.standard_normal((2 * k, big, big), dtype=np.float32)
    scatter *= amplitude * np.float32(math.sqrt(0.5))
    rf = ndimage.gaussian_filter(scatter, (0.0, *sigma))
    envelope_power = (rf**2).sum(axis=0) / np.float32(energy * k)

    # Log compression: parenchyma power 1 (0 dB) sits 19 dB below the top of the displayed range.
    top_db = 19.0 + rng.uniform(-config.gain_jitter_db, config.gain_jitter_db)
    db = 10.0 * np.log10(envelope_power + 1e-12)
    gray = (db - (top_db - config.dynamic_range_db)) * (255.0 / config.dynamic_range_db)
    gray = _block_mean(np.clip(gray, 0.0, 255.0), factor)
    image = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    mask = (_block_mean(nodule.mask.astype(np.float32), factor) >= 0.5).astype(np.uint8)
    return image, mask


def generate_phantom(n: int, config: PhantomConfig | None = None) -> PhantomSet:
    """Generate ``n`` scans. Deterministic in ``(n, config)``; sample ``i`` does not depend on ``n``."""
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"Parameter `n` should be a non-negative integer. Found `n = {n!r}`.")
    config = config or PhantomConfig()
    n = int(n)
    size = int(config.size)
    images = np.zeros((n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    levels = np.zeros(n, dtype=np.int64)
    points = np.zeros((n, 5), dtype=np.int64)
    diameters = np.zeros(n, dtype=np.float64)
    features: list[AcrFeatures] = []
    mm_per_px = config.field_of_view_mm / size
    for i in range(n):
        rng = sample_rng(config.seed, i)
        f = sample_acr_features(rng, config.level_weights)
        images[i], masks[i] = render(f, size, rng, config)
        features.append(f)
        levels[i] = tirads_level(f)
        points[i] = f.point_vector()
        diameters[i] = _max_diameter_px(masks[i].astype(bool)) * mm_per_px
    return PhantomSet(images, masks, levels, features, points, diameters, config)
