"""Joint augmentation: image and mask move together, photometric ops spare the mask, seeds reproduce."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mtlbench.tasks.thyroid.augment import (
    AugmentConfig,
    _affine_theta,
    _sampling_grid,
    _smoothed_noise,
    augment,
)

EVERYTHING = AugmentConfig(
    flip_p=1.0, affine_p=1.0, brightness_p=1.0, contrast_p=1.0, gamma_p=1.0, noise_p=1.0
)
GEOMETRY_ONLY = dataclasses.replace(EVERYTHING, brightness_p=0.0, contrast_p=0.0, gamma_p=0.0, noise_p=0.0)
PHOTOMETRY_ONLY = dataclasses.replace(EVERYTHING, flip_p=0.0, affine_p=0.0)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bright_square(height: int = 48, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark textured image with a bright off-centre square, and the square as the mask."""
    image = 0.1 + 0.1 * torch.rand(1, height, width, generator=generator(123))
    mask = torch.zeros(1, height, width)
    mask[:, 10:26, 8:28] = 1.0  # off-centre: flips and rotations visibly move it
    image[mask.bool()] = 1.0
    return image, mask


def textured(height: int = 40, width: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.rand(1, height, width, generator=generator(7))
    mask = (torch.rand(1, height, width, generator=generator(8)) > 0.6).float()
    return image, mask


def test_disabled_is_the_identity() -> None:
    image, mask = textured()
    out_image, out_mask = augment(image, mask, generator(0), dataclasses.replace(EVERYTHING, enabled=False))
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_zero_probabilities_are_the_identity() -> None:
    image, mask = textured()
    nothing = AugmentConfig(flip_p=0, affine_p=0, brightness_p=0, contrast_p=0, gamma_p=0, noise_p=0)
    out_image, out_mask = augment(image, mask, generator(0), nothing)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_the_identity_affine_resamples_exactly_on_a_non_square_image() -> None:
    image, mask = textured()
    still = AugmentConfig(
        flip_p=0, affine_p=1, rotation_deg=0, scale_range=(1, 1), translate=0,
        brightness_p=0, contrast_p=0, gamma_p=0, noise_p=0,
    )  # fmt: skip
    out_image, out_mask = augment(image, mask, generator(0), still)
    torch.testing.assert_close(out_image, image, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask)


@pytest.mark.parametrize("seed", range(8))
def test_the_mask_stays_binary_and_the_image_in_range(seed: int) -> None:
    image, mask = textured()
    out_image, out_mask = augment(image, mask, generator(seed), EVERYTHING)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert out_mask.dtype == mask.dtype
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    bool_mask = mask.bool()
    _, out_bool = augment(image, bool_mask, generator(seed), EVERYTHING)
    assert out_bool.dtype == torch.bool and torch.equal(out_bool.float(), out_mask)


@pytest.mark.parametrize("seed", range(12))
def test_geometry_moves_image_and_mask_together(seed: int) -> None:
    image, mask = bright_square()
    out_image, out_mask = augment(image, mask, generator(seed), GEOMETRY_ONLY)
    assert not torch.equal(out_mask, mask)  # it did move (a flip at least)
    inside = out_mask.bool()
    # Over a background <= 0.2, bilinear > 0.65 puts more than half the weight on square pixels: the sample
    # point is within half a pixel of the square on both axes, where nearest-neighbour picks a square pixel.
    assert not (out_image > 0.65)[~inside].any()
    assert (out_image[inside] >= 0.25).all()
    assert inside.sum() > 0.75 * mask.sum()


def test_flip_is_left_right_only() -> None:
    image, mask = bright_square()
    flip_only = dataclasses.replace(GEOMETRY_ONLY, affine_p=0.0)
    out_image, out_mask = augment(image, mask, generator(0), flip_only)
    assert torch.equal(out_image, image.flip(-1)) and torch.equal(out_mask, mask.flip(-1))


def test_rotation_is_a_rotation_in_pixels_on_non_square_images() -> None:
    # A 90° turn about the centre takes a point 12 px right of the centre to 12 px above or below it.
    height, width = 40, 80
    mask = torch.zeros(1, 1, height, width)
    mask[..., 19:21, 51:53] = 1.0  # centre (20, 40); block centred 12 px to the right
    grid = _sampling_grid(_affine_theta(90.0, 1.0, 0.0, 0.0, height, width), height, width)
    rows, cols = torch.nonzero(
        F.grid_sample(mask, grid, mode="nearest", align_corners=False)[0, 0], as_tuple=True
    )
    assert rows.numel() == 4
    assert abs(float(rows.float().mean()) - 19.5) == pytest.approx(12.0, abs=0.51)
    assert float(cols.float().mean()) == pytest.approx(39.5, abs=0.51)


def test_the_sampling_grid_matches_affine_grid() -> None:
    theta = _affine_theta(7.0, 1.07, 0.03, -0.04, 30, 52)
    expected = F.affine_grid(theta, [1, 1, 30, 52], align_corners=False)
    torch.testing.assert_close(_sampling_grid(theta, 30, 52), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_photometric_ops_never_change_the_mask(seed: int) -> None:
    image, mask = textured()
    out_image, out_mask = augment(image, mask, generator(seed), PHOTOMETRY_ONLY)
    assert torch.equal(out_mask, mask)
    assert not torch.allclose(out_image, image)


def test_photometric_ops_keep_the_nodule_brighter_without_noise() -> None:
    image, mask = bright_square()
    monotone = dataclasses.replace(PHOTOMETRY_ONLY, noise_p=0.0)
    for seed in range(6):
        out_image, _ = augment(image, mask, generator(seed), monotone)
        assert out_image[mask.bool()].min() > out_image[~mask.bool()].max()


def test_same_seed_same_output_and_different_seeds_differ() -> None:
    image, mask = textured()
    first = augment(image, mask, generator(5), EVERYTHING)
    again = augment(image, mask, generator(5), EVERYTHING)
    other = augment(image, mask, generator(6), EVERYTHING)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_inputs_are_not_modified() -> None:
    image, mask = textured()
    image_copy, mask_copy = image.clone(), mask.clone()
    augment(image, mask, generator(1), EVERYTHING)
    assert torch.equal(image, image_copy) and torch.equal(mask, mask_copy)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_smoothed_noise_has_unit_variance_and_is_correlated(sigma: float) -> None:
    # The edges are replicated, which raises the variance near the border: look inside.
    noise = _smoothed_noise((256, 256), sigma, generator(0))[16:-16, 16:-16]
    assert float(noise.std()) == pytest.approx(1.0, abs=0.06)
    assert abs(float(noise.mean())) < 0.05
    neighbours = torch.corrcoef(torch.stack([noise[:, :-1].flatten(), noise[:, 1:].flatten()]))[0, 1]
    assert float(neighbours) > 0.5  # speckle-like: adjacent pixels are correlated


@pytest.mark.parametrize(
    ("field", "value"),
    [("flip_p", 1.5), ("noise_p", -0.1), ("rotation_deg", -1.0), ("translate", 0.7),
     ("scale_range", (1.1, 0.9)), ("gamma_range", (0.0, 1.0)), ("noise_sigma", -0.1)],
)  # fmt: skip
def test_invalid_configs_name_the_parameter(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"`{field} = "):
        AugmentConfig(**{field: value})


def test_shape_checks() -> None:
    image, mask = textured()
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        augment(image[0], mask[0], generator(0), EVERYTHING)
    with pytest.raises(ValueError, match="does not match"):
        augment(image, mask[:, :-1], generator(0), EVERYTHING)
