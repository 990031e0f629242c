"""Protocol: radiomics targets stay those of the image the network sees, and ``data.augment`` works on
the phantom.

The targets are computed once per sample on the un-augmented image; an augmentation that moved any of
the 13 features would train the clinically guided slice on stale targets. With the slice trained, the
training augmentation is therefore the left-right flip only (``TARGET_PRESERVING``), under which every
feature is unchanged; without it, the full augmentation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlbench.config import resolve_config
from mtlbench.runner import prepare_run
from mtlbench.tasks.thyroid.augment import TARGET_PRESERVING, AugmentConfig, augment
from mtlbench.tasks.thyroid.dataset import INTENSITY_MEAN, INTENSITY_STD, standardise
from mtlbench.tasks.thyroid.radiomics import FEATURE_NAMES, compute_features
from tests.tiny import tiny_run_overrides


def _splits(tmp_path, **extra):  # type: ignore[no-untyped-def]
    cfg = resolve_config(tiny_run_overrides(tmp_path, **extra), method="vanilla")
    prepared = prepare_run(cfg)
    return prepared.task.prepare(progress=False)


def _pixels(image: torch.Tensor) -> np.ndarray:
    """A normalised (1, H, W) image back to its uint8 grey levels."""
    return np.rint((image[0].numpy() * INTENSITY_STD + INTENSITY_MEAN) * 255).astype(np.uint8)


def test_the_flip_leaves_every_target_unchanged_and_the_full_augmentation_does_not(tmp_path) -> None:
    splits = _splits(tmp_path, **{"data.augment": "true"})
    train = splits.train
    moved = 0
    for index in range(6):
        image, mask = train.images[index], train.masks[index]
        original = compute_features(image, mask)
        flipped = compute_features(image[:, ::-1].copy(), mask[:, ::-1].copy())
        np.testing.assert_allclose(flipped, original, rtol=1e-9, atol=1e-9, equal_nan=True)
        # the full augmentation (affine, photometric, noise) moves the texture targets
        generator = torch.Generator().manual_seed(index)
        full = AugmentConfig(flip_p=0.0, affine_p=1.0, brightness_p=1.0, contrast_p=1.0, noise_p=1.0)
        img = torch.from_numpy(image.astype(np.float32) / 255).unsqueeze(0)
        msk = torch.from_numpy(mask.astype(np.float32)).unsqueeze(0)
        aug_image, aug_mask = augment(img, msk, generator, full)
        changed = compute_features(
            np.rint(aug_image[0].numpy() * 255).astype(np.uint8), (aug_mask[0].numpy() > 0).astype(np.uint8)
        )
        glcm = [FEATURE_NAMES.index("glcm_contrast"), FEATURE_NAMES.index("glcm_energy")]
        moved += not np.allclose(changed[glcm], original[glcm], rtol=1e-3)
    assert moved >= 5


def test_training_targets_are_the_features_of_the_augmented_sample(tmp_path) -> None:
    splits = _splits(tmp_path, **{"data.augment": "true"})
    train = splits.train
    assert train.augment == TARGET_PRESERVING
    mean = np.asarray(splits.info["radiomics_mean"])
    std = np.asarray(splits.info["radiomics_std"])
    flipped = 0
    for epoch in range(2):
        train.set_epoch(epoch)
        for index in range(len(train)):
            item = train[index]
            pixels, mask = _pixels(item["image"]), (item["mask"][0].numpy() > 0).astype(np.uint8)
            flipped += not np.array_equal(pixels, train.images[index])
            recomputed = standardise(compute_features(pixels, mask)[None], mean, std)[0]
            np.testing.assert_allclose(
                item["clinical"].numpy(), recomputed, rtol=1e-5, atol=1e-5, equal_nan=True
            )
    assert 0 < flipped < 2 * len(train)  # the flip does fire, about half the time


def test_data_augment_changes_what_the_phantom_serves(tmp_path) -> None:
    plain = _splits(tmp_path / "a").train
    augmented = _splits(tmp_path / "b", **{"data.augment": "true"}).train
    assert plain.augment is None
    different = sum(not torch.equal(plain[i]["image"], augmented[i]["image"]) for i in range(len(plain)))
    assert different > 0
    # without the clinically guided slice there is no target to keep: the full augmentation
    full = _splits(tmp_path / "c", **{"data.augment": "true", "task_args.clinical_guidance": "false"}).train
    assert full.augment == AugmentConfig()


@pytest.mark.parametrize("augment", ["false", "true"])
def test_a_phantom_run_with_augmentation_is_reproducible(tmp_path, augment) -> None:
    from mtlbench.runner import run_experiment

    overrides = tiny_run_overrides(tmp_path, **{"data.augment": augment, "train.epochs": 1})
    first = run_experiment(resolve_config(overrides, output_dir=str(tmp_path / "r1"))).result["metrics"]
    second = run_experiment(resolve_config(overrides, output_dir=str(tmp_path / "r2"))).result["metrics"]
    assert first["val"]["dice"] == second["val"]["dice"]
