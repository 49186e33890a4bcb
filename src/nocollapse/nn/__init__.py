"""Building blocks with parameters: backbones, MLP heads, the EMA target."""

from nocollapse.nn.backbones import BACKBONES, build_backbone
from nocollapse.nn.convnet import ConvNet
from nocollapse.nn.ema import EMATarget
from nocollapse.nn.heads import mlp

__all__ = ["BACKBONES", "ConvNet", "EMATarget", "build_backbone", "mlp"]
