"""Contract tests run for every registered backbone: a new backbone gets them by registering.

Each test builds the backbone with the small options of :data:`SMALL_OPTIONS` (a backbone absent
from it is built with its defaults) so the whole file stays fast on a 2-core CPU.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlbench.backbones.contract import Backbone
from mtlbench.registry import BACKBONES, UnknownNameError, create_backbone, list_backbones
from tests.tiny import SMALL_BACKBONE_OPTIONS as SMALL_OPTIONS

NAMES = list_backbones()
SIZES = [(64, 64), (64, 96)]


def build(name: str, seed: int = 0, **overrides: Any) -> Backbone:
    torch.manual_seed(seed)
    return create_backbone(name, **{**SMALL_OPTIONS.get(name, {}), **overrides})


def feature_loss(features: list[Tensor]) -> Tensor:
    return sum(f.float().square().mean() for f in features)  # type: ignore[return-value]


def mixes_samples(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_builtins_are_registered() -> None:
    assert {"unet_small", "nnunet_plain", "nnunet_residual", "timm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_factory_signature_and_description(name: str) -> None:
    entry = BACKBONES.get(name)
    assert entry.description, f"{name}: the factory's docstring needs a first line"
    params = list(inspect.signature(entry.obj).parameters.values())
    assert params[0].name == "in_channels" and params[0].default == 1
    assert "pretrained" in {p.name for p in params}
    for p in params[1:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: option {p.name} must be keyword-only"
        assert p.annotation is not inspect.Parameter.empty, f"{name}: option {p.name} needs a type hint"
        assert p.default is not inspect.Parameter.empty, f"{name}: option {p.name} needs a default"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_raises_type_error(name: str) -> None:
    with pytest.raises(TypeError):
        build(name, not_an_option=1)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_contract(name: str, size: tuple[int, int]) -> None:
    model = build(name)
    contract = model.contract
    assert contract.in_channels == 1
    assert len(contract) >= 1
    assert contract.strides() == sorted(contract.strides()), "levels must go finest first"
    assert size[0] % model.input_multiple() == 0 and size[1] % model.input_multiple() == 0
    features = model(torch.randn(2, 1, *size))
    assert isinstance(features, list) and len(features) == len(contract)
    for feature, level in zip(features, contract.levels, strict=True):
        assert tuple(feature.shape) == (2, level.channels, size[0] // level.stride, size[1] // level.stride)
        assert torch.isfinite(feature).all()
    assert features[-1].shape[1] == contract.bottleneck.channels


@pytest.mark.parametrize("name", NAMES)
def test_in_channels(name: str) -> None:
    model = build(name, in_channels=3)
    assert model.contract.in_channels == 3
    features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == model.contract.channels()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name: str) -> None:
    x = torch.randn(2, 1, 64, 64)
    first, second = build(name, seed=3), build(name, seed=3)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    for a, b in zip(first(x), second(x), strict=True):
        assert torch.equal(a, b)
    other = build(name, seed=4)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_independent(name: str) -> None:
    model = build(name)
    if mixes_samples(model):
        pytest.skip(f"{name} uses BatchNorm, which mixes the samples of a batch in training mode")
    x = torch.randn(3, 1, 64, 64)
    batched = model(x)
    alone = model(x[1:2])
    for a, b in zip(batched, alone, strict=True):
        torch.testing.assert_close(a[1:2], b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = build(name)
    feature_loss(model(torch.randn(2, 1, 64, 64))).backward()
    for key, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{key} received no gradient"
            assert torch.isfinite(param.grad).all(), f"{key} has a non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_through_a_head(name: str) -> None:
    """The shape of RLAR: a penalty on d(task loss)/d(representation) is trained by backprop."""
    model = build(name)
    channels = model.contract.bottleneck.channels
    head = nn.Sequential(
        nn.Conv2d(channels, 4, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    )
    bottleneck = model(torch.randn(2, 1, 64, 64))[-1]
    task_loss = head(bottleneck).square().mean()
    (grad,) = torch.autograd.grad(task_loss, bottleneck, create_graph=True)
    grad.square().sum().backward()
    for key, param in head.named_parameters():
        assert param.grad is not None, f"head {key} received no gradient"
        assert torch.isfinite(param.grad).all()
    assert any(p.grad is not None for p in model.parameters()), "the penalty should reach the backbone"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_through_the_backbone(name: str) -> None:
    """Second-order gradients through every layer (catches in-place ops that break them)."""
    model = build(name)
    x = torch.randn(2, 1, 64, 64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(feature_loss(model(x)), x, create_graph=True)
    grad_x.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_on_cpu(name: str) -> None:
    model = build(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model(torch.randn(2, 1, 64, 64))
    assert [f.shape[1] for f in features] == model.contract.channels()
    assert all(torch.isfinite(f.float()).all() for f in features)
    feature_loss(features).backward()


def test_unknown_backbone_suggests_a_close_match() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_backbone("unet_smal")
    assert "unet_small" in str(info.value)


@pytest.mark.parametrize("name", ["nnunet_plain", "nnunet_residual"])
def test_nnunet_encoders_have_norm_and_nonlinearity(name: str) -> None:
    """dynamic_network_architectures defaults norm_op/nonlin to None: a bare conv stack."""
    model = build(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    nonlins = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert norms and nonlins, "encoder built without normalisation or non-linearity"
    assert len(norms) == len(convs)
    assert all(n.affine and n.eps == 1e-5 for n in norms)
    assert all(c.bias is not None for c in convs if c.kernel_size == (3, 3))
    assert not mixes_samples(model)


def test_nnunet_defaults_follow_nnunet_2d() -> None:
    plain = create_backbone("nnunet_plain")
    assert plain.contract.channels() == [32, 64, 128, 256, 512, 512]
    assert plain.contract.strides() == [1, 2, 4, 8, 16, 32]
    # Tiny widths so the 6-stage ResEnc default block counts build fast.
    residual = create_backbone("nnunet_residual", features_per_stage=(4,) * 6)
    assert [len(stage.blocks) for stage in residual.encoder.stages] == [1, 3, 4, 6, 6, 6]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unet_small", {"widths": ()}),
        ("unet_small", {"convs_per_stage": 0}),
        ("nnunet_plain", {"n_stages": 3, "features_per_stage": (8, 16)}),
        ("nnunet_plain", {"n_stages": 0}),
        ("nnunet_residual", {"n_stages": 2, "n_blocks_per_stage": (1, 1, 1)}),
    ],
)
def test_invalid_options_raise_value_error(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Parameter `"):
        create_backbone(name, **options)


def test_timm_out_indices_select_levels() -> None:
    model = build("timm", out_indices=(2, 3, 4))
    assert model.contract.strides() == [8, 16, 32]
    assert len(model(torch.randn(1, 1, 64, 64))) == 3


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("nnunet_plain", {"n_stages": 2, "features_per_stage": (2, 4)}),
        ("nnunet_residual", {"n_stages": 2, "features_per_stage": (2, 4), "n_blocks_per_stage": (1, 1)}),
    ],
)
def test_nnunet_inplace_leaky_relu_keeps_second_order_exact(name: str, options: dict[str, Any]) -> None:
    """nnU-Net's LeakyReLU(inplace=True) must not corrupt the double backward RLAR relies on."""
    torch.manual_seed(0)
    model = create_backbone(name, **options).double()
    assert any(isinstance(m, nn.LeakyReLU) and m.inplace for m in model.modules())
    x = torch.randn(1, 1, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda inp: model(inp)[-1], (x,))


@pytest.mark.parametrize("name", NAMES)
def test_options_may_be_lists(name: str) -> None:
    """The config layer resolves YAML sequences to lists; they must build the same backbone."""
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_OPTIONS.get(name, {}).items()}
    torch.manual_seed(0)
    model = create_backbone(name, **as_lists)
    assert model.contract == build(name).contract
