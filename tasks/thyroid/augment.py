"""Joint image/mask augmentation for B-mode ultrasound, deterministic given a ``torch.Generator``.

:func:`augment` applies, in this order:

1. **Horizontal flip** (left-right) with probability ``flip_p``. Never up-down: rows are depth, the
   transducer is at the top, and depth-dependent appearance (near-field reverberation, attenuation,
   acoustic shadows below calcifications, the "taller than wide" ACR criterion) has a direction that a
   vertical flip would invert. A transverse view's left and right are mirror images of each other, so a
   left-right flip yields a plausible image.
2. **Small affine** with probability ``affine_p``: rotation within ±``rotation_deg`` degrees, isotropic
   scale in ``scale_range``, translation within ±``translate`` of the image size per axis, about the image
   centre, in pixel space (a rotation stays a rotation on non-square images). Implemented with
   ``affine_grid``/``grid_sample`` (``align_corners=False``, zeros outside): bilinear for the image,
   nearest for the mask, so the mask stays binary and moves exactly with the image.
3. **Photometric**, image only, each with its own probability: additive brightness within
   ±``brightness``, contrast about the image mean by a factor in ``contrast_range``, gamma in
   ``gamma_range`` (drawn log-uniformly, so ``(0.8, 1.25)`` is symmetric).
4. **Speckle-like noise**, image only, with probability ``noise_p``: ``image · (1 + σ·n)`` with ``σ``
   uniform in ``(0, noise_sigma)`` and ``n`` standard normal noise smoothed by a Gaussian of about
   ``noise_smoothing`` px (binomial passes) and rescaled to unit variance (speckle is spatially correlated
   over the point-spread function, a few pixels).

The image is expected in display intensities ``[0, 1]`` (``uint8 / 255``, before normalisation) and is
clamped to ``[0, 1]`` after the photometric steps. Every random number comes from ``generator`` and the
scalars are drawn in a fixed order whether or not their step fires, so a seed gives one outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TARGET_PRESERVING", "AugmentConfig", "augment", "training_augmentation"]


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Parameter `{name}` should be a probability in [0, 1]. Found `{name} = {value!r}`.")


def _check_range(name: str, value: tuple[float, float], positive: bool) -> None:
    low, high = value
    if not low <= high or (positive and low <= 0):
        kind = "0 < low <= high" if positive else "low <= high"
        raise ValueError(
            f"Parameter `{name}` should be a (low, high) pair with {kind}. Found `{name} = {value!r}`."
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of :func:`augment` (module docstring); ``enabled=False`` is the identity."""

    enabled: bool = True
    flip_p: float = 0.5
    affine_p: float = 0.75
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness_p: float = 0.5
    brightness: float = 0.1
    contrast_p: float = 0.5
    contrast_range: tuple[float, float] = (0.8, 1.2)
    gamma_p: float = 0.5
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_p: float = 0.5
    noise_sigma: float = 0.15
    noise_smoothing: float = 1.0

    def __post_init__(self) -> None:
        for name in ("flip_p", "affine_p", "brightness_p", "contrast_p", "gamma_p", "noise_p"):
            _check_probability(name, getattr(self, name))
        for name in ("rotation_deg", "translate", "brightness", "noise_sigma", "noise_smoothing"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"Parameter `{name}` should be >= 0. Found `{name} = {value!r}`.")
        if self.translate > 0.5:
            raise ValueError(
                f"Parameter `translate` should be at most 0.5. Found `translate = {self.translate!r}`."
            )
        _check_range("scale_range", self.scale_range, positive=True)
        _check_range("contrast_range", self.contrast_range, positive=True)
        _check_range("gamma_range", self.gamma_range, positive=True)


#: The transforms that leave all 13 radiomics targets of a sample unchanged: the left-right flip only.
#: Shape features are mirror-invariant; Sobel magnitudes and the edge rings too; first-order statistics
#: do not see positions; pyradiomics' symmetric GLCM averaged over 0°, 45°, 90° and 135° maps 45° onto
#: 135° under the flip, so the average is unchanged. Affine resampling moves every feature (aspect ratio,
#: texture) and the photometric steps and noise move the intensity and texture features (on the phantom
#: the full augmentation moves GLCM contrast and energy by about 0.5 SD), so they are left out whenever
#: the targets are trained (tests/tasks/thyroid/test_augment_targets.py).
TARGET_PRESERVING = AugmentConfig(
    flip_p=0.5, affine_p=0.0, brightness_p=0.0, contrast_p=0.0, gamma_p=0.0, noise_p=0.0
)


def training_augmentation(enabled: bool, clinical_targets: bool) -> AugmentConfig | None:
    """The augmentation of training samples under ``data.augment``: none when off; when the clinically
    guided slice is trained, only :data:`TARGET_PRESERVING` (its radiomics targets stay those of the
    image the network sees); otherwise the full default :class:`AugmentConfig`."""
    if not enabled:
        return None
    return TARGET_PRESERVING if clinical_targets else AugmentConfig()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _affine_theta(
    angle_deg: float, scale: float, shift_x: float, shift_y: float, height: int, width: int
) -> Tensor:
    """The (1, 2, 3) ``affine_grid`` matrix (output → input, normalised coordinates) of the transform."""
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # Inverse map in pixel units is R(-angle)/scale; normalised x spans W/2 px and y spans H/2 px.
    aspect = width / height
    theta = torch.tensor(
        [
            [cos, sin / aspect, -2.0 * shift_x],
            [-sin * aspect, cos, -2.0 * shift_y],
        ],
        dtype=torch.float32,
    )
    return theta.unsqueeze(0)


def _binomial_passes(sigma: float) -> int:
    """Passes of the [1, 2, 1]/4 filter whose combined kernel has standard deviation closest to ``sigma``."""
    # Each pass adds a variance of 1/2 px²; repeated binomial passes converge to a Gaussian.
    return max(1, round(2.0 * sigma * sigma))


def _smoothed_noise(shape: tuple[int, int], sigma: float, generator: torch.Generator) -> Tensor:
    """Standard normal noise of ``shape``, smoothed by a Gaussian of ``sigma`` px, at unit variance.

    The Gaussian is approximated by ``round(2 sigma²)`` passes of the binomial filter [1, 2, 1]/4 along
    each axis (edges replicated): shifted-slice additions, several times faster than ``conv2d`` on a CPU
    for a 512×512 image.
    """
    noise = torch.randn(shape, generator=generator)
    if sigma <= 0:
        return noise
    passes = _binomial_passes(sigma)
    x = noise
    for _ in range(passes):
        for dim in (0, 1):
            padded = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)
            n = x.shape[dim]
            x = (padded.narrow(dim, 0, n) + 2.0 * padded.narrow(dim, 1, n) + padded.narrow(dim, 2, n)) * 0.25
    # The 1-D kernel is binomial(2p, k) / 4^p; white noise through k⊗k keeps a variance (Σk²)².
    coefficients = torch.tensor(
        [math.comb(2 * passes, k) for k in range(2 * passes + 1)], dtype=torch.float64
    )
    gain = float(((coefficients / 4.0**passes) ** 2).sum())
    return x / gain


def _sampling_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``affine_grid(theta, (1, 1, H, W), align_corners=False)`` as two outer sums (faster on a CPU)."""
    xs = (torch.arange(width, dtype=torch.float32) * 2.0 + 1.0) / width - 1.0
    ys = (torch.arange(height, dtype=torch.float32) * 2.0 + 1.0) / height - 1.0
    (a, b, c), (d, e, f) = theta[0].tolist()
    grid = torch.empty(1, height, width, 2)
    torch.add((a * xs)[None, :], (b * ys + c)[:, None], out=grid[0, :, :, 0])
    torch.add((d * xs)[None, :], (e * ys + f)[:, None], out=grid[0, :, :, 1])
    return grid


def augment(
    image: Tensor, mask: Tensor, generator: torch.Generator, config: AugmentConfig
) -> tuple[Tensor, Tensor]:
    """One random augmentation of an image (1, H, W) in [0, 1] and its mask (1, H, W), applied jointly.

    Returns new tensors (the inputs are not modified) of the inputs' shapes; the mask keeps its dtype and
    its values (nearest-neighbour resampling, zeros brought in at the borders). With
    ``config.enabled=False`` the inputs are returned unchanged.
    """
    if image.ndim != 3 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, H, W), got shape {tuple(image.shape)}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}")
    if not config.enabled:
        return image, mask
    _, height, width = image.shape
    g = generator

    # All scalars first, in a fixed order, so that one step firing never shifts another's draws.
    flip = _uniform(g, 0, 1) < config.flip_p
    affine = _uniform(g, 0, 1) < config.affine_p
    angle = _uniform(g, -config.rotation_deg, config.rotation_deg)
    scale = math.exp(_uniform(g, math.log(config.scale_range[0]), math.log(config.scale_range[1])))
    shift_x = _uniform(g, -config.translate, config.translate)
    shift_y = _uniform(g, -config.translate, config.translate)
    brighten = _uniform(g, 0, 1) < config.brightness_p
    offset = _uniform(g, -config.brightness, config.brightness)
    contrast = _uniform(g, 0, 1) < config.contrast_p
    factor = _uniform(g, *config.contrast_range)
    gamma_on = _uniform(g, 0, 1) < config.gamma_p
    gamma = math.exp(_uniform(g, math.log(config.gamma_range[0]), math.log(config.gamma_range[1])))
    noise_on = _uniform(g, 0, 1) < config.noise_p
    sigma = _uniform(g, 0.0, config.noise_sigma)

    out_image = image.float()
    out_mask = mask
    if flip:
        out_image = out_image.flip(-1)
        out_mask = out_mask.flip(-1)
    if affine:
        theta = _affine_theta(angle, scale, shift_x, shift_y, height, width)
        grid = _sampling_grid(theta, height, width).to(image.device)
        out_image = F.grid_sample(
            out_image.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        ).squeeze(0)
        warped = F.grid_sample(
            out_mask.unsqueeze(0).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        ).squeeze(0)
        out_mask = warped.to(mask.dtype)

    photometric = brighten or contrast or gamma_on or noise_on
    if photometric:
        out_image = out_image.clone() if out_image is image else out_image
        if brighten:
            out_image = out_image + offset
        if contrast:
            mean = out_image.mean()
            out_image = (out_image - mean) * factor + mean
        out_image = out_image.clamp(0.0, 1.0)
        if gamma_on:
            out_image = out_image.pow(gamma)
        if noise_on and sigma > 0:
            noise = _smoothed_noise((height, width), config.noise_smoothing, g).to(image.device)
            out_image = (out_image * (1.0 + sigma * noise)).clamp(0.0, 1.0)
    if out_image.dtype != image.dtype:
        out_image = out_image.to(image.dtype)
    if out_mask is mask:
        out_mask = mask.clone()
    if out_image is image:
        out_image = image.clone()
    return out_image, out_mask
