"""Methods: an architecture plus loss terms (plus a target update), built by name from a config."""

from __future__ import annotations

from torch import Tensor

from nocollapse.config import Config
from nocollapse.encoder import load_state
from nocollapse.methods.base import Method
from nocollapse.methods.byol import BYOL
from nocollapse.methods.msbreg import MSBReg
from nocollapse.methods.regularizers import REGULARIZERS, build_regularizers
from nocollapse.methods.sfrik import SFRIK
from nocollapse.methods.wmse import WMSE
from nocollapse.nn.backbones import build_backbone

__all__ = ["BYOL", "MSBReg", "Method", "REGULARIZERS", "SFRIK", "WMSE", "build_method", "method_label"]


def method_label(config: Config) -> str:
    """What the run trains, as its run directory and its tables name it: the method and its attached regularizers,
    e.g. ``byol`` or ``byol+uniformity``. MSBReg's singular value and Brownian terms are regularizers too, named like
    the others, so that its ablations (``msbreg``: the centroid loss alone) read apart from it."""
    return "+".join([config.method.name, *(name for name in REGULARIZERS if getattr(config.regularizers, name) != 0)])


def build_method(config: Config, in_channels: int, image_size: int = 32, *, encoder_state: dict[str, Tensor] | None = None,
                 source: str = "") -> Method:
    """The method named by ``config.method.name`` on the backbone named by ``config.model.backbone``,
    with the regularizers whose weight in ``config.regularizers`` is not 0 attached; ``image_size`` (the
    images' side) settles ``model.stem=auto``.

    A method's ``forward(views, generator)`` takes (M, B, C, H, W) views and returns a dict of loss
    terms whose ``"loss"`` entry is minimised; its ``encoder`` attribute is what evaluation uses;
    methods with an EMA target also have ``update_target(momentum)``.

    ``encoder_state`` (weights from ``source``, for its errors) starts the encoder from trained weights; it is loaded
    before the method is built around it, so that an EMA target starts as the same copy.
    """
    model, method = config.model, config.method
    encoder = build_backbone(model.backbone, in_channels=in_channels, widths=model.widths, depth=model.depth, stem=model.stem,
                             zero_init_residual=model.zero_init_residual, image_size=image_size)
    if encoder_state is not None:
        load_state(encoder, encoder_state, source)
    heads = {"projector_hidden": model.projector_hidden, "projection_dim": model.projection_dim, "predictor_hidden": model.predictor_hidden}
    built: Method
    if method.name == "byol":
        built = BYOL(encoder, **heads)
    elif method.name == "msbreg":
        built = MSBReg(encoder, **heads, centroid=method.msbreg.centroid)
    elif method.name == "wmse":
        w = method.wmse
        built = WMSE(encoder, head_hidden=model.projector_hidden, embedding_dim=model.projection_dim, w_size=w.w_size, w_iter=w.w_iter, eps=w.eps)
    elif method.name == "sfrik":
        s = method.sfrik
        built = SFRIK(encoder, projector_hidden=model.projector_hidden, projection_dim=model.projection_dim, invariance=s.invariance,
                      mmd=s.mmd, kernel_weights=s.kernel_weights)
    else:
        raise ValueError(f"unknown method {method.name!r}")
    for name, weight, regularizer in build_regularizers(config.regularizers):
        built.attach(name, weight, regularizer)
    return built
