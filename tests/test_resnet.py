"""ResNet-18/34/50 encoders: shapes, parameter counts, gradient flow, zero-init residuals, layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nocollapse.nn.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50

FACTORIES = {"resnet18": (resnet18, 512), "resnet34": (resnet34, 512), "resnet50": (resnet50, 2048)}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(name: str, stem: str, channels: int) -> None:
    # Width 16 keeps the real forward passes fast; the architecture is otherwise the full one.
    torch.manual_seed(0)
    factory, dim = FACTORIES[name]
    net = factory(stem=stem, in_channels=channels, width=16).eval()
    dim //= 4
    assert net.output_dim == dim
    sizes = [32, 28] if stem == "cifar" else [32]  # 28×28: Fashion-MNIST through the CIFAR stem
    with torch.no_grad():
        for side in sizes:
            out = net(torch.randn(2, channels, side, side))
            assert out.shape == (2, dim)
            assert torch.isfinite(out).all()


def test_parameter_counts_and_output_dim_at_full_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # Counts do not depend on the init: skip Kaiming sampling of 11–23 M weights to keep this fast
    # (the meta device would be the obvious tool, but its first normal_ imports torch._dynamo: seconds).
    monkeypatch.setattr(nn.init, "kaiming_normal_", lambda w, **_: w)
    r18, r34, r50 = (f(stem="imagenet", in_channels=3) for f in (resnet18, resnet34, resnet50))
    # torchvision: 11,689,512 / 21,797,672 / 25,557,032 parameters with fc 512·1000+1000 or 2048·1000+1000.
    assert _num_params(r18) == 11_689_512 - 513_000
    assert _num_params(r34) == 21_797_672 - 513_000
    assert _num_params(r50) == 25_557_032 - 2_049_000
    assert (r18.output_dim, r34.output_dim, r50.output_dim) == (512, 512, 2048)
    # The CIFAR stem swaps a 7×7 kernel for a 3×3 one: 64·3·(49 − 9) fewer weights.
    cifar = resnet18(stem="cifar", in_channels=1)
    assert _num_params(cifar) == 11_176_512 - 64 * 3 * 49 + 64 * 1 * 9 and cifar.output_dim == 512


def test_width_scales_output_dim() -> None:
    assert resnet18(width=16).output_dim == 128
    assert resnet50(width=8).output_dim == 256


def test_gradient_reaches_first_conv() -> None:
    torch.manual_seed(0)
    net = resnet18(width=8, in_channels=1, zero_init_residual=True)  # gradients must still flow via the shortcuts
    net(torch.randn(4, 1, 28, 28)).square().sum().backward()
    grad = net.stem[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("factory", [resnet18, resnet50])
def test_zero_init_residual_blocks_start_as_shortcut(factory) -> None:
    torch.manual_seed(0)
    net = factory(width=8, zero_init_residual=True)
    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == (8 if factory is resnet18 else 16)
    for block in blocks:
        assert torch.count_nonzero(block.last_bn.weight) == 0
        in_planes = block.conv1.in_channels
        x = torch.randn(2, in_planes, 8, 8)
        shortcut = x if block.downsample is None else block.downsample(x)
        # With the residual branch's BN scale at 0 (and bias 0) the block is relu(shortcut(x)).
        torch.testing.assert_close(block(x), torch.relu(shortcut))

    plain = factory(width=8)  # off by default, as torchvision and BYOL's ResNet-18
    for block in (m for m in plain.modules() if isinstance(m, (BasicBlock, Bottleneck))):
        assert torch.all(block.last_bn.weight == 1)


@pytest.mark.parametrize("overrides, zeroed", [([], False), (["model.zero_init_residual=false"], False), (["model.zero_init_residual=true"], True)])
def test_model_zero_init_residual_reaches_the_resnet(monkeypatch: pytest.MonkeyPatch, overrides: list[str], zeroed: bool) -> None:
    """The setting travels from the config through ``build_method`` to every block's last BatchNorm."""
    from nocollapse.config import resolve_config
    from nocollapse.methods import build_method

    monkeypatch.setattr(nn.init, "kaiming_normal_", lambda tensor, **_: tensor)  # skip sampling 11 M weights: only the BNs matter
    config = resolve_config("fmnist", ["model.backbone=resnet18", "model.projector_hidden=16", "model.projection_dim=8",
                                       "model.predictor_hidden=16", *overrides])
    assert config.model.zero_init_residual is zeroed
    encoder = build_method(config, in_channels=1).encoder
    blocks = [m for m in encoder.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    for block in blocks:
        assert torch.all(block.last_bn.weight == 0) if zeroed else torch.all(block.last_bn.weight == 1)
        assert torch.all(block.bn1.weight == 1)  # only the branch's last BN is zeroed


def test_init() -> None:
    net = resnet18(width=8)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
            # Kaiming fan_out: std = sqrt(2 / (out_channels · k · k)).
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            if m.weight.numel() >= 1000:
                assert abs(m.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.15


def test_channels_last_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    net = resnet18(width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out_cl = net_cl(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = net_cl(x.contiguous(memory_format=torch.channels_last))
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.shape == (2, 512 // 8)
    assert torch.isfinite(out_bf16).all()
    assert (out_bf16.float() - ref).abs().max() < 0.1 * ref.abs().max() + 1e-3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="tiny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="four"):
        ResNet(BasicBlock, (2, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        resnet18(width=8)(torch.randn(3, 32, 32))
