"""BYOL's regression loss (Grill et al., NeurIPS 2020, arXiv 2006.07733, eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.losses.precision import float32_loss


@float32_loss
def normalized_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``‖p̂ − ẑ‖² = 2 − 2·cos(p, z)``.

    Args:
        prediction: (N, d) online predictions ``p``.
        target: (N, d) target projections ``z'``; the caller detaches them (BYOL's stop-gradient).

    Returns:
        A scalar in [0, 4], computed in float32 at least, also under autocast.
    """
    p = F.normalize(prediction, dim=-1)
    z = F.normalize(target, dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


@float32_loss
def byol_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Symmetrised BYOL loss over M ≥ 2 views.

    ``L = 1/(M(M−1)) · Σ_{i≠j} mean_n ‖p̂ᵢ − ẑ'ⱼ‖² · 2`` — the factor 2 keeps the two-view case equal to the
    paper's ``ℓ(p₁, z'₂) + ℓ(p₂, z'₁)`` (range [0, 8]); with M > 2 views it averages over ordered pairs
    and stays on the same scale.

    Args:
        predictions: (M, N, d) online predictions, one row block per view.
        targets: (M, N, d) target projections of the same views (detached by the caller).

    Returns:
        A scalar, computed in float32 at least, also under autocast.
    """
    if predictions.ndim != 3 or predictions.shape != targets.shape or predictions.shape[0] < 2:
        raise ValueError(
            f"byol_loss wants (M, N, d) predictions and targets with M >= 2 views, "
            f"got {tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    views = predictions.shape[0]
    p = F.normalize(predictions, dim=-1)
    z = F.normalize(targets, dim=-1)
    # mean_cos[i, j] = mean_n cos(p_i[n], z_j[n]) for every view pair at once.
    mean_cos = torch.einsum("ind,jnd->ij", p, z) / p.shape[1]
    # The pairs i ≠ j: all of them less the diagonal (a boolean mask would cost a host sync on a GPU).
    pairs_mean_cos = (mean_cos.sum() - mean_cos.diagonal().sum()) / (views * (views - 1))
    return 2 * (2 - 2 * pairs_mean_cos)
