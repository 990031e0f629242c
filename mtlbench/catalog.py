"""The built-in registry entries: name → (module that registers it, one-line description).

``mtlbench list`` and ``mtlbench --help`` read this table instead of importing torch, so they
answer at once. ``tests/test_registry.py`` checks it against what the modules actually register
(every built-in present, descriptions equal to the docstrings' first lines).
"""

from __future__ import annotations

BUILTIN: dict[str, dict[str, tuple[str, str]]] = {
    "tasks": {
        "thyroid": (
            "mtlbench.tasks.thyroid.task",
            "Thyroid ultrasound: nodule segmentation, TI-RADS grading, clinically guided radiomics slice.",
        ),
    },
    "methods": {
        "vanilla": (
            "mtlbench.methods.vanilla",
            "Weighted sum of the task losses with the task's fixed weights (one backward pass).",
        ),
        "rlar": (
            "mtlbench.methods.rlar",
            "Representation-level adversarial regulariser: penalise aligned task gradients in latent space.",
        ),
    },
    "backbones": {
        "unet_small": (
            "mtlbench.backbones.unet",
            "Small U-Net encoder (InstanceNorm, LeakyReLU, strided convs); fast on a CPU.",
        ),
        "nnunet_plain": (
            "mtlbench.backbones.nnunet",
            "nnU-Net v2 plain conv encoder (PlainConvEncoder, InstanceNorm, LeakyReLU, 2D defaults).",
        ),
        "nnunet_residual": (
            "mtlbench.backbones.nnunet",
            "nnU-Net v2 residual encoder (ResidualEncoder, ResEnc-M-like blocks, InstanceNorm, LeakyReLU).",
        ),
        "timm": (
            "mtlbench.backbones.timm_backbone",
            "Any timm CNN as a multi-scale encoder (features_only; note most timm CNNs use BatchNorm).",
        ),
    },
}
