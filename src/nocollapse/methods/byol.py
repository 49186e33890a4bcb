"""BYOL: an online network predicts an EMA target's projection of another view (Grill et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nocollapse.losses.byol import byol_loss
from nocollapse.nn.ema import EMATarget
from nocollapse.nn.heads import mlp


class BYOL(nn.Module):
    """``p = q(g(f(v)))`` online, ``z' = g_ξ(f_ξ(v))`` target; loss :func:`~nocollapse.losses.byol_loss`.

    The target is a copy of ``encoder`` + projector made at construction and moved by
    :meth:`update_target` after each optimiser step (the training loop calls it with τ from
    :func:`~nocollapse.train.schedules.ema_momentum`). The predictor exists on the online branch only.

    Args:
        encoder: backbone mapping images to (B, encoder.output_dim) features.
        projector_hidden, projection_dim: projector ``Linear(D→h) → BN → ReLU → Linear(h→d)``.
        predictor_hidden: predictor ``Linear(d→h) → BN → ReLU → Linear(h→d)``.
    """

    def __init__(self, encoder: nn.Module, *, projector_hidden: int = 4096, projection_dim: int = 256, predictor_hidden: int = 4096) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(encoder.output_dim, projector_hidden, projection_dim)
        self.predictor = mlp(projection_dim, predictor_hidden, projection_dim)
        self.target = EMATarget(nn.Sequential(self.encoder, self.projector))

    def forward(self, views: Tensor) -> dict[str, Tensor]:
        """Loss terms for (M, B, C, H, W) views: ``{"loss": total to minimise, ...named parts}``.

        Each view goes through the networks on its own, so BatchNorm statistics are per view as in
        the official implementation (one joint batch would let a view's statistics leak into the
        other's normalisation).
        """
        predictions = torch.stack([self.predictor(self.projector(self.encoder(v))) for v in views])  # (M, B, d)
        with torch.no_grad():
            targets = torch.stack([self.target(v) for v in views])  # (M, B, d)
        return {"loss": byol_loss(predictions, targets)}

    def update_target(self, momentum: float) -> None:
        """EMA step ``ξ ← τ ξ + (1 − τ) θ`` of the target encoder and projector (τ = ``momentum``)."""
        self.target.update(nn.Sequential(self.encoder, self.projector), momentum)
