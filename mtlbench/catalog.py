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
        "toy": (
            "mtlbench.tasks.toy.problem",
            "Two-objective toy problem (Liu et al. 2021, Fig. 1) for visualising how methods combine conflicting gradients.",
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
        "pcgrad": (
            "mtlbench.methods.pcgrad",
            "PCGrad (Yu 2020): project each task gradient off the conflicting others, then sum.",
        ),
        "cagrad": (
            "mtlbench.methods.cagrad",
            "CAGrad (Liu 2021): maximise the worst task's improvement within a ball around the mean gradient.",
        ),
        "mgda": (
            "mtlbench.methods.mgda",
            "MGDA (Sener 2018): min-norm convex combination of the shared-parameter task gradients.",
        ),
        "mgda_ub": (
            "mtlbench.methods.mgda",
            "MGDA-UB (Sener 2018): MGDA weights from shared-representation gradients, one weighted backward.",
        ),
        "imtl_g": (
            "mtlbench.methods.imtl",
            "IMTL-G (Liu 2021): the convex-sum update with equal projections on every unit task gradient.",
        ),
        "uw": (
            "mtlbench.methods.uw",
            "Uncertainty weighting (Kendall 2018): learnable log-variances s_t, Σ_t ½·exp(−s_t)·λ_t·L_t + ½·s_t.",
        ),
        "dwa": (
            "mtlbench.methods.dwa",
            "Dynamic weight average (Liu 2019): weights K·softmax(L̄(e−1)/L̄(e−2) / T) of epoch-mean losses.",
        ),
        "gradnorm": (
            "mtlbench.methods.gradnorm",
            "GradNorm (Chen 2018): learnt task weights pulling gradient norms towards relative training rates.",
        ),
        "famo": (
            "mtlbench.methods.famo",
            "FAMO (Liu 2023): balance the tasks' log-loss decrease with softmax logits updated after each step.",
        ),
        "rlw": (
            "mtlbench.methods.rlw",
            "Random loss weighting (Lin 2022): weights softmax(ε), ε ~ N(0, I), drawn afresh every step.",
        ),
        "rep_mtl": (
            "mtlbench.methods.rep_mtl",
            "Rep-MTL: task-saliency entropy and cross-task contrastive alignment on the shared representation.",
        ),
        "nash_mtl": (
            "mtlbench.methods.nash_mtl",
            "Nash-MTL: shared update Σ α_t g_t with the Nash bargaining weights (M α = 1/α), norm-clipped.",
        ),
        "aligned_mtl": (
            "mtlbench.methods.aligned_mtl",
            "Aligned-MTL: task weights B𝟙 from the eigendecomposition of G Gᵀ that align the task gradients.",
        ),
        "libmtl": (
            "mtlbench.methods.libmtl_adapter",
            "Any LibMTL weighting strategy (LibMTL.weighting.<Name>) run through a bridge to our step inputs.",
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
