"""A small convolutional encoder for 2-core CPUs and 28×28 / 32×32 images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ConvNet(nn.Module):
    """Stages of 3×3 ``conv → BN → ReLU``; each stage after the first halves the resolution.

    With ``widths=(32, 64, 128, 256)`` and ``depth=1`` on a 28×28 input the feature maps are
    28×28×32 → 14×14×64 → 7×7×128 → 4×4×256, then global average pooling gives a 256-d feature
    (``output_dim``). ``depth`` adds stride-1 convs per stage: more compute at the same resolution.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128, 256), depth: int = 1) -> None:
        super().__init__()
        if not widths or depth < 1:
            raise ValueError(f"ConvNet needs at least one stage and depth >= 1, got widths={widths}, depth={depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            layers += _conv_bn_relu(channels, width, stride=1 if stage == 0 else 2)
            for _ in range(depth - 1):
                layers += _conv_bn_relu(width, width, stride=1)
            channels = width
        self.features = nn.Sequential(*layers)
        self.output_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)  # (B, output_dim)
