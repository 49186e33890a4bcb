"""Backbones by name: the one place that maps a name to an encoder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from nocollapse.nn.convnet import ConvNet

BACKBONES = ("convnet", "resnet18", "resnet34", "resnet50")
CIFAR_STEM_MAX_SIZE = 64  # pixels: up to this side the ResNets keep full resolution in the stem (stem="auto")


def resolve_stem(stem: str, image_size: int) -> str:
    """``stem`` itself, or for "auto" the cifar stem up to CIFAR_STEM_MAX_SIZE px and the imagenet stem above
    (its stride 4 would leave a 28-px image 7×7 before the first block; a 224-px one needs it)."""
    if stem != "auto":
        return stem
    return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"


def build_backbone(name: str, *, in_channels: int, widths: Sequence[int] = (32, 64, 128, 256), depth: int = 1, stem: str = "auto",
                   zero_init_residual: bool = False, image_size: int = 32) -> nn.Module:
    """An encoder with an ``output_dim`` attribute mapping (B, in_channels, H, W) to (B, output_dim).

    ``widths`` and ``depth`` shape the ConvNet; ``stem`` (:func:`resolve_stem` of the images' side
    ``image_size``) and ``zero_init_residual`` the ResNets.
    """
    if name == "convnet":
        return ConvNet(in_channels, widths, depth)
    from nocollapse.nn import resnet  # ResNets are only built when asked for

    if name in ("resnet18", "resnet34", "resnet50"):
        return getattr(resnet, name)(in_channels=in_channels, stem=resolve_stem(stem, image_size), zero_init_residual=zero_init_residual)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
