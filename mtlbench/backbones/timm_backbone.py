"""Any timm model as a backbone, through timm's ``features_only`` feature extractor."""

from __future__ import annotations

from torch import Tensor, nn

from mtlbench.backbones.contract import Backbone, FeatureContract, FeatureLevel
from mtlbench.backbones.pretrained import apply_pretrained
from mtlbench.registry import register_backbone


class TimmBackbone(Backbone):
    """Wraps a timm ``features_only`` model; the contract comes from its ``feature_info``."""

    def __init__(self, model: nn.Module, model_name: str, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.model_name = model_name
        info = model.feature_info  # type: ignore[attr-defined]
        self.contract = FeatureContract(
            levels=tuple(
                FeatureLevel(channels=int(c), stride=int(r))
                for c, r in zip(info.channels(), info.reduction(), strict=True)
            ),
            in_channels=in_channels,
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}"


@register_backbone("timm")
def timm_features(
    in_channels: int = 1,
    *,
    model_name: str = "resnet18",
    out_indices: tuple[int, ...] | None = None,
    pretrained: str | None = None,
) -> TimmBackbone:
    """Any timm CNN as a multi-scale encoder (features_only; note most timm CNNs use BatchNorm).

    ``model_name`` is any timm model that supports ``features_only``; ``out_indices`` picks the
    feature levels (timm's default: all). BatchNorm mixes the samples of a batch, so per-sample
    gradients w.r.t. the representation are not independent for most timm CNNs (prefer
    ``unet_small`` or the nnU-Net encoders for methods that need them). Weights are never
    downloaded: ``pretrained`` is a local checkpoint, either timm's own (the classifier's tensors
    are ignored) or one of this backbone.
    """
    import warnings

    with warnings.catch_warnings():  # timm's import warns about torch.jit deprecations, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        import timm

    if not timm.is_model(model_name):
        import difflib

        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise ValueError(f"model_name {model_name!r} is not a timm model{hint}")
    kwargs = {} if out_indices is None else {"out_indices": tuple(int(i) for i in out_indices)}
    model = timm.create_model(
        model_name, features_only=True, in_chans=in_channels, pretrained=False, **kwargs
    )
    backbone = TimmBackbone(model, model_name, in_channels)
    # Loaded into the timm model itself so that timm's key names match; a checkpoint of this
    # wrapper has the same names under ``model.``, which the prefix removes.
    apply_pretrained(backbone.model, pretrained, prefix="model.")
    return backbone
