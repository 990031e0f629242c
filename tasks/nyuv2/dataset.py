"""One split of a dense scene benchmark as samples for the trainer, with the papers' augmentation.

Augmentation (``data.augment=true``, training split only) is the one of MTAN's ``create_dataset.py``
that CAGrad, Nash-MTL, FAMO and LibMTL's SegNet example train with: a random scale s ∈ {1, 1.2, 1.5}
crops an (⌊H/s⌋, ⌊W/s⌋) window at a random position and resizes it back to (H, W) — the image and
normals bilinearly (align_corners=True), labels and depth by nearest neighbour, depth divided by s
(the scene moves closer) — then a horizontal flip with probability ½ that also negates the normals'
x component. Normals are not renormalised after the bilinear resize (as in the papers). Every random
number comes from a generator seeded with (seed, epoch, sample), so a run is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .layout import FOLDERS, read_sample

SCALES = (1.0, 1.2, 1.5)
_MASK64 = (1 << 64) - 1


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    entropy = [int(seed) & _MASK64, int(epoch) & _MASK64, int(index) & _MASK64]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) >> 1


def scale_crop_flip(sample: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """The papers' random scale-crop and flip, applied consistently to the image and every target."""
    height, width = sample["image"].shape[-2:]
    scale = SCALES[int(torch.randint(len(SCALES), (1,), generator=generator))]
    h, w = int(height / scale), int(width / scale)
    top = int(torch.randint(height - h + 1, (1,), generator=generator))
    left = int(torch.randint(width - w + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    out = {}
    for key, value in sample.items():
        if value.dim() < 2:
            out[key] = value
            continue
        crop = value[..., top : top + h, left : left + w]
        if key in ("image", "normal"):
            crop = F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=True)[0]
        else:
            as_float = crop[None, None] if key == "seg" else crop[None]
            crop = F.interpolate(as_float.float(), size=(height, width), mode="nearest")[0]
            crop = crop[0].to(value.dtype) if key == "seg" else crop
        if key == "depth":
            crop = crop / scale
        if flip:
            crop = crop.flip(-1)
            if key == "normal":
                crop = torch.cat([-crop[:1], crop[1:]])
        out[key] = crop
    return out


class DenseSceneDataset(Dataset):
    """Samples ``indices`` of ``<root>/<split>``: ``{"image": (3, H, W), "seg": (H, W) int64 (−1 =
    ignore), "depth": (1, H, W), "normal": (3, H, W), "split_id": ()}`` for the active ``tasks``.

    Labels outside [0, ``num_classes``) become −1 (the metrics ignore them either way; the loss would
    fail on them). ``split_id`` tags which data a sample comes from (0: the part of the training
    split held out for model selection, 1: the official validation split) for Δm%.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        indices: np.ndarray,
        tasks: tuple[str, ...],
        num_classes: int,
        split_id: int,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.indices = np.asarray(indices, dtype=np.int64)
        self.tasks = tasks
        self.num_classes = num_classes
        self.split_id = split_id
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.folders = ("image", *(FOLDERS[t] for t in tasks))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        index = int(self.indices[position])
        arrays = read_sample(self.root, self.split, index, self.folders)
        sample: dict[str, Tensor] = {"image": torch.from_numpy(arrays["image"])}
        if "seg" in self.tasks:
            label = np.rint(arrays["label"]).astype(np.int64)
            label[(label < 0) | (label >= self.num_classes)] = -1
            sample["seg"] = torch.from_numpy(label)
        if "depth" in self.tasks:
            sample["depth"] = torch.from_numpy(arrays["depth"])
        if "normal" in self.tasks:
            sample["normal"] = torch.from_numpy(arrays["normal"])
        if self.augment:
            generator = torch.Generator().manual_seed(augmentation_seed(self.seed, self.epoch, index))
            sample = scale_crop_flip(sample, generator)
        sample["split_id"] = torch.tensor(self.split_id)
        return sample
