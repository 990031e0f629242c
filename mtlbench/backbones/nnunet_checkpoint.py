"""Initialising a multitask model from an nnU-Net v2 ``checkpoint_final.pth`` (encoder and decoder).

nnU-Net v2 saves ``{"network_weights": network.state_dict(), ...}`` for a ``PlainConvUNet`` or
``ResidualEncoderUNet`` of ``dynamic_network_architectures``. The file is read with
``torch.load(..., weights_only=True)``; the numpy scalars of nnU-Net's training log are allowed,
nothing else that would execute code.

Matching rules (every checkpoint tensor ends in exactly one of encoder / decoder / unmatched):

* **Encoder.** ``encoder.<name>`` goes to ``model.backbone`` under the same name. ``nnunet_plain`` and
  ``nnunet_residual`` keep the same encoder class under ``.encoder``, so names agree one to one.
  ``decoder.encoder.<name>`` is the same tensor again (the nnU-Net decoder holds a reference to its
  encoder) and is matched to the same model tensor.
* **Decoder** (into the segmentation head's ``UNetDecoder``). Stages are paired by the encoder skip
  they merge, counted from the finest: with equal stage counts nnU-Net ``decoder.stages.s`` pairs with
  our ``decoder.stages.s`` (both deepest first), and with fewer stages here nnU-Net's deepest decoder
  stages have no counterpart. Inside a stage the ``j``-th convolution and the ``j``-th normalisation
  of nnU-Net's ``convs.j`` pair with the ``j``-th ``Conv2d`` and ``j``-th ``InstanceNorm2d`` of ours
  (``all_modules.0`` is the same conv again, a later ``all_modules.i`` with parameters the same
  norm). ``decoder.transpconvs.s`` pairs with our ``decoder.transpconvs.s`` under the same stage
  pairing when our decoder has them (``upsampling="transposed"``, nnU-Net's design; the thyroid's
  ``task_args.seg_decoder=nnunet``); with bilinear upsampling (no parameters) they have no
  counterpart. The last ``seg_layers`` entry (full resolution) pairs with our ``decoder.out``:
  copied when the shapes agree, or, for a two-class softmax output (background, foreground) and our
  single logit, converted to ``w_fg - w_bg`` and ``b_fg - b_bg``, which gives the same foreground
  probability. The coarser ``seg_layers`` (deep supervision; we have one output) have no
  counterpart.
* **Whole modules only.** A pair loads only if every tensor of the model module (a conv's weight and
  bias, a norm's weight and bias) has the checkpoint's shape; otherwise all of them are reported as a
  shape mismatch, so a bias is never loaded without its weight.

With the transposed decoder and the checkpoint's stages and features, every encoder and decoder
tensor loads except the coarser ``seg_layers``, and the head's logit is nnU-Net's foreground minus
background logit. With the bilinear decoder the first conv of each stage reads ``below + skip``
channels where nnU-Net's reads ``2 * skip`` (transposed-conv output + skip), so it normally stays at
initialisation while the stage's norms and second conv load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlbench.backbones.pretrained import read_checkpoint
from mtlbench.model import MultiTaskModel

NO_COUNTERPART = "no counterpart"
SHAPE_MISMATCH = "shape mismatch"
CONFLICT = "conflict"
UnmatchedKind = Literal["no counterpart", "shape mismatch", "conflict"]

_DECODER_BLOCK = re.compile(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm|all_modules\.(\d+))\.(\w+)")
_SEG_LAYER = re.compile(r"decoder\.seg_layers\.(\d+)\.(weight|bias)")
_TRANSPCONV = re.compile(r"decoder\.transpconvs\.(\d+)\.(weight|bias)")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class TensorMatch:
    """A checkpoint tensor copied (or, with a ``note``, converted) into a model tensor."""

    checkpoint: str
    model: str
    note: str = ""


@dataclass(frozen=True)
class UnmatchedTensor:
    """A checkpoint tensor that was not loaded, with why (``kind``) and the details."""

    checkpoint: str
    kind: UnmatchedKind
    detail: str


@dataclass
class NnUNetLoadReport:
    """What :func:`load_nnunet_checkpoint` did with every checkpoint tensor and every model tensor.

    ``encoder`` and ``decoder`` hold the loaded pairs, ``unmatched`` the checkpoint tensors left out
    (kind ``"no counterpart"``, ``"shape mismatch"`` or ``"conflict"``), ``initialised`` the model
    tensors (full ``MultiTaskModel`` names) that kept their initialisation. Model names are
    ``backbone.<name>`` and ``heads.<head>.<name>``.
    """

    path: str
    total: int
    encoder: list[TensorMatch] = field(default_factory=list)
    decoder: list[TensorMatch] = field(default_factory=list)
    unmatched: list[UnmatchedTensor] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        """Checkpoint tensors with an outcome; equals ``total`` by construction."""
        return len(self.encoder) + len(self.decoder) + len(self.unmatched)

    def summary(self) -> str:
        kinds = {k: 0 for k in (NO_COUNTERPART, SHAPE_MISMATCH, CONFLICT)}
        for u in self.unmatched:
            kinds[u.kind] += 1
        return (
            f"{self.path}: {self.total} checkpoint tensors, {len(self.encoder)} loaded into the encoder, "
            f"{len(self.decoder)} into the decoder, {len(self.unmatched)} not loaded "
            f"({kinds[NO_COUNTERPART]} without counterpart, {kinds[SHAPE_MISMATCH]} shape mismatches, "
            f"{kinds[CONFLICT]} conflicts); {len(self.initialised)} model tensors keep their initialisation"
        )

    def format_report(self, verbose: bool = False) -> str:
        """The summary, then the decoder pairs, unmatched tensors and model tensors left at init.

        Encoder pairs (identical names) are listed only with ``verbose=True``; model tensors left at
        initialisation are counted per head unless ``verbose``.
        """
        lines = [self.summary()]
        if verbose:
            lines.append("encoder:")
            lines += [f"  {m.checkpoint} -> {m.model}" for m in self.encoder]
        lines.append("decoder:")
        lines += [
            f"  {m.checkpoint} -> {m.model}" + (f" ({m.note})" if m.note else "") for m in self.decoder
        ] or ["  (none)"]
        lines.append("not loaded:")
        lines += [f"  {u.checkpoint}: {u.kind}, {u.detail}" for u in self.unmatched] or ["  (none)"]
        lines.append("left at initialisation:")
        if verbose:
            lines += [f"  {name}" for name in self.initialised] or ["  (none)"]
        else:
            groups: dict[str, int] = {}
            for name in self.initialised:
                parts = name.split(".")
                group = ".".join(parts[:2]) if parts[0] == "heads" else parts[0]
                groups[group] = groups.get(group, 0) + 1
            lines += [f"  {group}: {count} tensors" for group, count in groups.items()] or ["  (none)"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for storing beside a run's results."""
        return {
            "path": self.path,
            "total": self.total,
            "encoder": [vars(m) for m in self.encoder],
            "decoder": [vars(m) for m in self.decoder],
            "unmatched": [vars(u) for u in self.unmatched],
            "initialised": list(self.initialised),
        }


def read_network_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The ``network_weights`` of an nnU-Net v2 checkpoint and the rest of the file, read safely."""
    file = Path(path).expanduser()
    raw = read_checkpoint(file, "nnU-Net checkpoint")
    weights = raw.get("network_weights") if isinstance(raw, Mapping) else None
    if not isinstance(weights, Mapping) or not any(isinstance(v, Tensor) for v in weights.values()):
        found = ", ".join(repr(k) for k in list(raw)[:8]) if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(
            f"{str(file)!r} is not an nnU-Net v2 checkpoint: no 'network_weights' mapping of tensors "
            f"(found {found})"
        )
    tensors = {str(k): v for k, v in weights.items() if isinstance(v, Tensor)}
    for wrapper in _WRAPPER_PREFIXES:
        if all(k.startswith(wrapper) for k in tensors):
            tensors = {k[len(wrapper) :]: v for k, v in tensors.items()}
    return tensors, {k: v for k, v in raw.items() if k != "network_weights"}


def _decoder_layers(head: nn.Module) -> tuple[list[tuple[list[str], list[str]]], str | None]:
    """Per stage of our decoder, the names of its convs and norms in order; and its output conv."""
    decoder = getattr(head, "decoder", None)
    stages = getattr(decoder, "stages", None)
    if decoder is None or not isinstance(stages, nn.ModuleList):
        return [], None
    layers = []
    for s, stage in enumerate(stages):
        convs = [f"decoder.stages.{s}.{n}" for n, m in stage.named_modules() if isinstance(m, nn.Conv2d)]
        norms = [
            f"decoder.stages.{s}.{n}" for n, m in stage.named_modules() if isinstance(m, nn.InstanceNorm2d)
        ]
        layers.append((convs, norms))
    out = "decoder.out" if isinstance(getattr(decoder, "out", None), nn.Conv2d) else None
    return layers, out


def _is_region_based(extra: dict[str, Any]) -> bool:
    init_args = extra.get("init_args")
    dataset_json = init_args.get("dataset_json") if isinstance(init_args, Mapping) else None
    return isinstance(dataset_json, Mapping) and "regions_class_order" in dataset_json


def load_nnunet_checkpoint(
    model: MultiTaskModel, path: str | Path, seg_head: str | None = None
) -> NnUNetLoadReport:
    """Initialise ``model`` from an nnU-Net v2 checkpoint: encoder into the backbone, decoder into a head.

    The rules are in the module docstring. ``seg_head`` names the head whose ``decoder`` (a
    :class:`mtlbench.heads.UNetDecoder`) receives the decoder tensors (the task's
    ``segmentation_head``); with ``None`` only the encoder is loaded. Raises ``FileNotFoundError``
    for a missing file, ``ValueError`` for a file without ``network_weights`` and for a checkpoint
    of which no encoder tensor fits the backbone (almost certainly the wrong file or backbone).
    """
    weights, extra = read_network_weights(path)
    backbone_state = model.backbone.state_dict()
    head = model.heads[seg_head] if seg_head is not None and seg_head in model.heads else None
    head_state = head.state_dict() if head is not None else {}
    stage_layers, out_layer = _decoder_layers(head) if head is not None else ([], None)
    region_based = _is_region_based(extra)
    upsamples_by_transpconv = head is not None and isinstance(
        getattr(getattr(head, "decoder", None), "transpconvs", None), nn.ModuleList
    )
    n_seg_layers = sum(1 for k in weights if _SEG_LAYER.fullmatch(k) and k.endswith(".weight"))
    # Stages pair by the skip they merge: with fewer stages here, nnU-Net's deepest stages have no partner.
    nnunet_stages = {m[1] for k in weights if (m := _DECODER_BLOCK.fullmatch(k))}
    level_offset = len(nnunet_stages) - len(stage_layers)

    # Each checkpoint tensor gets a proposal: (role, model name, tensor to load, note) or a reason.
    proposals: dict[str, tuple[str, str, Tensor, str]] = {}
    reasons: dict[str, tuple[UnmatchedKind, str]] = {}

    def propose_decoder(key: str, local: str, tensor: Tensor, note: str = "") -> None:
        if local not in head_state:
            reasons[key] = (NO_COUNTERPART, f"our decoder has no {local}")
        else:
            proposals[key] = ("decoder", f"heads.{seg_head}.{local}", tensor, note)

    for key, tensor in weights.items():
        encoder_name = key[len("decoder.") :] if key.startswith("decoder.encoder.") else key
        if encoder_name.startswith("encoder."):
            if encoder_name in backbone_state:
                note = f"same tensor as {encoder_name}" if encoder_name != key else ""
                proposals[key] = ("encoder", f"backbone.{encoder_name}", tensor, note)
            else:
                reasons[key] = (NO_COUNTERPART, f"the backbone has no {encoder_name}")
            continue
        if not key.startswith("decoder."):
            reasons[key] = (NO_COUNTERPART, "neither an encoder nor a decoder tensor")
            continue
        if head is None:
            reasons[key] = (
                NO_COUNTERPART,
                "the task names no segmentation head"
                if seg_head is None
                else f"the model has no head {seg_head!r}",
            )
            continue
        block, seg_layer = _DECODER_BLOCK.fullmatch(key), _SEG_LAYER.fullmatch(key)
        if block:
            s, j, param = int(block[1]), int(block[2]), block[5]
            role = "conv" if block[3] == "conv" or block[4] == "0" else "norm"
            ours_s = s - level_offset
            if not 0 <= ours_s < len(stage_layers):
                reasons[key] = (NO_COUNTERPART, f"our decoder has no stage at the level of its stage {s}")
                continue
            ours = stage_layers[ours_s][0 if role == "conv" else 1]
            if j >= len(ours):
                reasons[key] = (NO_COUNTERPART, f"our decoder stage {s} has {len(ours)} {role}s")
                continue
            note = (
                f"same tensor as decoder.stages.{s}.convs.{j}.{role}.{param}" if block[4] is not None else ""
            )
            propose_decoder(key, f"{ours[j]}.{param}", tensor, note)
        elif seg_layer:
            index, param = int(seg_layer[1]), seg_layer[2]
            if out_layer is None:
                reasons[key] = (NO_COUNTERPART, f"head {seg_head!r} has no decoder output conv")
                continue
            if index != n_seg_layers - 1:
                reasons[key] = (NO_COUNTERPART, "deep-supervision output; our decoder has one output")
                continue
            local = f"{out_layer}.{param}"
            target = head_state[local]
            if tensor.shape[0] == 2 and target.shape[0] == 1 and not region_based:
                tensor = tensor[1:2] - tensor[0:1]
                propose_decoder(key, local, tensor, "two-class softmax converted to the foreground logit")
            else:
                propose_decoder(key, local, tensor)
        elif transpconv := _TRANSPCONV.fullmatch(key):
            s, param = int(transpconv[1]), transpconv[2]
            if not upsamples_by_transpconv:
                reasons[key] = (NO_COUNTERPART, "our decoder upsamples bilinearly, without parameters")
            elif not 0 <= s - level_offset < len(stage_layers):
                reasons[key] = (NO_COUNTERPART, f"our decoder has no stage at the level of its stage {s}")
            else:
                propose_decoder(key, f"decoder.transpconvs.{s - level_offset}.{param}", tensor)
        else:
            reasons[key] = (NO_COUNTERPART, "not a tensor of nnU-Net's UNetDecoder layout")

    # Whole modules only: one mis-shaped tensor of a model module rejects all pairs into that module.
    states = {"encoder": backbone_state, "decoder": head_state}
    prefixes = {"encoder": "backbone.", "decoder": f"heads.{seg_head}."}
    bad_modules: dict[str, str] = {}
    for key, (role, name, tensor, _) in proposals.items():
        expected = states[role][name[len(prefixes[role]) :]].shape
        if tensor.shape != expected:
            bad_modules.setdefault(
                name.rsplit(".", 1)[0], f"{key} {tuple(tensor.shape)} vs {name} {tuple(expected)}"
            )

    report = NnUNetLoadReport(path=str(Path(path).expanduser()), total=len(weights))
    to_load: dict[str, Tensor] = {}
    for key in weights:
        if key in reasons:
            kind, detail = reasons[key]
            report.unmatched.append(UnmatchedTensor(key, kind, detail))
            continue
        role, name, value, note = proposals[key]
        module = name.rsplit(".", 1)[0]
        if module in bad_modules:
            report.unmatched.append(UnmatchedTensor(key, SHAPE_MISMATCH, bad_modules[module]))
            continue
        if name in to_load and not torch.equal(to_load[name], value):
            report.unmatched.append(
                UnmatchedTensor(key, CONFLICT, f"differs from another checkpoint tensor loaded into {name}")
            )
            continue
        to_load[name] = value
        (report.encoder if role == "encoder" else report.decoder).append(TensorMatch(key, name, note))

    if not report.encoder:
        raise ValueError(
            f"no encoder tensor of {report.path!r} fits the backbone {type(model.backbone).__name__} "
            f"(use nnunet_plain or nnunet_residual with the checkpoint's stages and features): "
            f"{report.summary()}"
        )
    _, unexpected = model.load_state_dict(to_load, strict=False)
    assert not unexpected, unexpected  # every name above was taken from the model's own state dict
    report.initialised = [n for n in model.state_dict() if n not in to_load]
    return report
