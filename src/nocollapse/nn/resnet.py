"""ResNet-18/34/50 encoders (He et al., CVPR 2016) written with ``torch.nn`` only.

The networks end at global average pooling: ``forward`` maps ``(B, C, H, W) → (B, output_dim)`` with no
classifier, which is what every self-supervised method here wants from its encoder. Two stems:

- ``"cifar"``: 3×3 conv, stride 1, padding 1, BN, ReLU, no max-pool — the standard stem for 32×32 (and
  28×28) images used by solo-learn, W-MSE and lightly's CIFAR benchmarks; the feature map entering
  stage 1 keeps the full input resolution.
- ``"imagenet"``: 7×7 conv, stride 2, padding 3, BN, ReLU, 3×3 max-pool stride 2 (input side /4).

Bottleneck blocks put the stride on the 3×3 conv ("ResNet v1.5", as torchvision does); this changes no
parameter count. With ``stem="imagenet"``, ``in_channels=3`` and ``width=64`` the parameter counts equal
torchvision's models without their ``fc`` layer (ResNet-18: 11,176,512; ResNet-50: 23,508,032).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``(B, in_planes, H, W) → (B, planes, H/stride, W/stride)``. The shortcut is the identity when shapes
    agree, else a strided 1×1 conv + BN (He et al.'s option B).
    """

    expansion: int = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        out_planes = planes * self.expansion
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(_conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, planes, H/s, W/s)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided) → 1×1 expand ×4, with a shortcut.

    ``(B, in_planes, H, W) → (B, 4·planes, H/stride, W/stride)``.
    """

    expansion: int = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(_conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, 4p, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, p, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, p, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4p, H/s, W/s)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet trunk ending in global average pooling: ``(B, in_channels, H, W) → (B, output_dim)``.

    Args:
        block: ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        in_channels: image channels (1 for Fashion-MNIST, 3 for RGB).
        stem: ``"cifar"`` (3×3 stride 1, no max-pool; for 28–64 px images) or ``"imagenet"``
            (7×7 stride 2 + max-pool; for ≥ 96 px images).
        zero_init_residual: zero the scale of the last BN of every residual branch, so each block starts
            as ``relu(shortcut(x))`` (Goyal et al. 2017; may help very large batches). Off by default, as
            in torchvision, solo-learn's CIFAR recipes and DeepMind's BYOL ResNet-18 (Haiku zero-inits only
            the bottleneck blocks of its ResNet-50); SFRIK's code (VICReg's ResNet) turns it on.
        width: channels of the first stage; stages have ``width·(1, 2, 4, 8)·expansion`` channels.

    Attributes:
        output_dim: feature size after pooling, ``8·width·expansion`` (512 for 18/34, 2048 for 50).

    Init: Kaiming-normal convs (``fan_out``, ReLU gain), BN weight 1 and bias 0. Works with
    ``channels_last`` inputs/weights and under ``torch.autocast`` (nothing here forces a layout or dtype).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        in_channels: int = 3,
        stem: Literal["cifar", "imagenet"] = "cifar",
        zero_init_residual: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must give four positive block counts, got {tuple(layers)}")
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be positive, got {in_channels} and {width}")
        if stem == "cifar":
            # Keep full resolution: a 32×32 image would be 8×8 after the ImageNet stem, too coarse.
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")

        in_planes = width
        stages: list[nn.Sequential] = []
        for i, num_blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2  # stages 2–4 halve the resolution in their first block
            blocks: list[nn.Module] = []
            for j in range(num_blocks):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.output_dim: int = in_planes

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"ResNet expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        x = self.stem(x)  # (B, w, H, W) cifar | (B, w, H/4, W/4) imagenet
        x = self.layer1(x)  # (B, w·e, H', W')
        x = self.layer2(x)  # (B, 2w·e, H'/2, W'/2)
        x = self.layer3(x)  # (B, 4w·e, H'/4, W'/4)
        x = self.layer4(x)  # (B, 8w·e, H'/8, W'/8)
        # Mean over the spatial dims rather than AdaptiveAvgPool2d + flatten: same numbers, and the
        # result is a plain contiguous (B, D) tensor whatever the input memory format.
        return torch.mean(x, dim=(2, 3))  # (B, output_dim)


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlock, (2, 2, 2, 2); ``output_dim`` 512 at width 64. Keywords go to :class:`ResNet`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlock, (3, 4, 6, 3); ``output_dim`` 512 at width 64. Keywords go to :class:`ResNet`."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: Bottleneck, (3, 4, 6, 3); ``output_dim`` 2048 at width 64. Keywords go to :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
