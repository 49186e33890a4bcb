"""Backbones by name: the one place that maps a name to an encoder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from nocollapse.nn.convnet import ConvNet

BACKBONES = ("convnet", "resnet18", "resnet34", "resnet50")


def build_backbone(name: str, *, in_channels: int, widths: Sequence[int] = (32, 64, 128, 256), depth: int = 1, stem: str = "cifar",
                   zero_init_residual: bool = False) -> nn.Module:
    """An encoder with an ``output_dim`` attribute mapping (B, in_channels, H, W) to (B, output_dim).

    ``widths`` and ``depth`` shape the ConvNet; ``stem`` and ``zero_init_residual`` the ResNets.
    """
    if name == "convnet":
        return ConvNet(in_channels, widths, depth)
    from nocollapse.nn import resnet  # ResNets are only built when asked for

    if name in ("resnet18", "resnet34", "resnet50"):
        return getattr(resnet, name)(in_channels=in_channels, stem=stem, zero_init_residual=zero_init_residual)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
