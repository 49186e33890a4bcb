"""Methods: an architecture plus loss terms (plus a target update), built by name from a config."""

from __future__ import annotations

from torch import nn

from nocollapse.config import Config
from nocollapse.methods.byol import BYOL
from nocollapse.methods.wmse import WMSE
from nocollapse.nn.backbones import build_backbone

__all__ = ["BYOL", "WMSE", "build_method"]


def build_method(config: Config, in_channels: int) -> nn.Module:
    """The method named by ``config.method.name`` on the backbone named by ``config.model.backbone``.

    A method's ``forward(views)`` takes (M, B, C, H, W) views and returns a dict of loss terms whose
    ``"loss"`` entry is minimised; its ``encoder`` attribute is what evaluation uses; methods with
    an EMA target also have ``update_target(momentum)``.
    """
    model = config.model
    encoder = build_backbone(model.backbone, in_channels=in_channels, widths=model.widths, depth=model.depth, stem=model.stem)
    if config.method.name == "byol":
        return BYOL(encoder, projector_hidden=model.projector_hidden, projection_dim=model.projection_dim, predictor_hidden=model.predictor_hidden)
    if config.method.name == "wmse":
        wmse = config.method.wmse
        return WMSE(encoder, head_hidden=model.projector_hidden, embedding_dim=model.projection_dim, w_size=wmse.w_size, w_iter=wmse.w_iter, eps=wmse.eps)
    raise ValueError(f"unknown method {config.method.name!r}")
