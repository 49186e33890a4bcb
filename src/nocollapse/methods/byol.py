"""BYOL: an online network predicts an EMA target's projection of another view (Grill et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nocollapse.losses.byol import byol_loss
from nocollapse.methods.base import Method
from nocollapse.nn.ema import EMATarget
from nocollapse.nn.heads import mlp


class BYOL(Method):
    """``p = q(g(f(v)))`` online, ``z' = g_ξ(f_ξ(v))`` target; loss :func:`~nocollapse.losses.byol_loss`.

    The target is a copy of ``encoder`` + projector made at construction and moved by
    :meth:`update_target` after each optimiser step (the training loop calls it with τ from
    :func:`~nocollapse.train.schedules.ema_momentum`). The predictor exists on the online branch only.

    Args:
        encoder: backbone mapping images to (B, encoder.output_dim) features.
        projector_hidden, projection_dim: projector ``Linear(D→h) → BN → ReLU → Linear(h→d)``.
        predictor_hidden: predictor ``Linear(d→h) → BN → ReLU → Linear(h→d)``; 0: no predictor (the identity), the
            ablation of BYOL's Table 5 after which the representation collapses.
    """

    def __init__(self, encoder: nn.Module, *, projector_hidden: int = 4096, projection_dim: int = 256, predictor_hidden: int = 4096) -> None:
        super().__init__()
        self.encoder = encoder
        # No output bias in either head, as DeepMind's MLP (``hk.Linear(output_size, with_bias=False)``).
        self.projector = mlp(encoder.output_dim, projector_hidden, projection_dim, output_bias=False)
        self.predictor = mlp(projection_dim, predictor_hidden, projection_dim, output_bias=False) if predictor_hidden else nn.Identity()
        self.target = EMATarget(nn.Sequential(self.encoder, self.projector))

    def branches(self, views: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(projections, predictions, targets), each (M, B, d), of (M, B, C, H, W) views.

        Each view goes through the networks on its own, so BatchNorm statistics are per view as in
        the official implementation (one joint batch would let a view's statistics leak into the
        other's normalisation).
        """
        projections = torch.stack([self.projector(self.encoder(v)) for v in views])
        predictions = torch.stack([self.predictor(z) for z in projections])
        with torch.no_grad():
            targets = torch.stack([self.target(v) for v in views])
        return projections, predictions, targets

    def objective(self, views: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        projections, predictions, targets = self.branches(views)
        return {"byol": byol_loss(predictions, targets)}, projections

    def project(self, features: Tensor) -> Tensor:
        return self.projector(features)

    def online_networks(self) -> nn.Module:
        return nn.ModuleList([self.encoder, self.projector, self.predictor])

    def update_target(self, momentum: float) -> None:
        """EMA step ``ξ ← τ ξ + (1 − τ) θ`` of the target encoder and projector (τ = ``momentum``)."""
        self.target.update(nn.Sequential(self.encoder, self.projector), momentum)
