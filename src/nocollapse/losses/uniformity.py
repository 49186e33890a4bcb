"""Where embeddings lie on the hypersphere: alignment of positives, uniformity of the batch, InfoNCE.

Wang & Isola (ICML 2020, arXiv 2005.10242) split contrastive learning into two properties of the
normalised embeddings ``ẑ = z/‖z‖``: positives close together (alignment) and the batch spread evenly
over the sphere (uniformity). Durrant & Leontidis add either (or the full InfoNCE) to BYOL, whose
embeddings are less uniform than contrastive ones (``SPEC.md`` §5). The same functions score a
representation in evaluation (``SPEC.md`` §6).

Every function takes the embeddings of M ≥ 1 views as (M, B, d) (or one view as (B, d)); row ``b``
of every view comes from the same image. Computed in float32 at least, also under autocast
(:func:`~nocollapse.losses.precision.float32_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.losses.precision import float32_loss


def _normalized_views(embeddings: Tensor, name: str, *, min_views: int = 1) -> Tensor:
    """(M, B, d) unit vectors of (M, B, d) or (B, d) embeddings."""
    z = embeddings.unsqueeze(0) if embeddings.ndim == 2 else embeddings
    if z.ndim != 3 or z.shape[0] < min_views:
        raise ValueError(f"{name} wants (B, d) or (M, B, d) embeddings with M >= {min_views} views, got shape {tuple(embeddings.shape)}")
    return F.normalize(z, dim=-1)


@float32_loss
def uniformity_loss(embeddings: Tensor, *, t: float = 2.0) -> Tensor:
    """Uniformity ``log mean_{i≠j} exp(−t‖ẑᵢ − ẑⱼ‖²)`` within each view, averaged over the M views.

    Lower is more uniform. 0 for a collapsed batch (every ``ẑᵢ`` equal); for many points uniform on a
    high-dimensional sphere ``‖ẑᵢ − ẑⱼ‖² ≈ 2``, so it approaches ``−2t`` (−4 at t = 2). Pairs are
    taken within a view, as in Wang & Isola's ``(uniform(x) + uniform(y))/2``; the mean over ``i≠j``
    equals their mean over ``i<j``.

    Args:
        embeddings: (B, d) or (M, B, d), B ≥ 2; normalised here.
        t: the Gaussian kernel's scale (2 in the paper).
    """
    z = _normalized_views(embeddings, "uniformity_loss")
    batch = z.shape[1]
    if batch < 2:
        raise ValueError(f"uniformity_loss needs at least 2 embeddings per view, got {batch}")
    squared_distances = (2 - 2 * z @ z.transpose(1, 2)).clamp_min(0)  # (M, B, B)
    self_pairs = torch.eye(batch, dtype=torch.bool, device=z.device)
    log_kernel = (-t * squared_distances).masked_fill(self_pairs, -math.inf).flatten(1)  # (M, B²)
    return (torch.logsumexp(log_kernel, dim=1) - math.log(batch * (batch - 1))).mean()


@float32_loss
def alignment_loss(embeddings: Tensor, *, alpha: float = 2.0) -> Tensor:
    """Alignment ``mean ‖ẑ_m − ẑ_m'‖^α`` over the images and every pair of views m < m'.

    0 when all views of an image map to the same point, at most ``2^α``; α = 2 (the paper's) gives
    ``2 − 2 cos``.

    Args:
        embeddings: (M, B, d) with M ≥ 2 views; normalised here.
        alpha: the exponent of the distance.
    """
    z = _normalized_views(embeddings, "alignment_loss", min_views=2)
    first, second = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    distances = (z[first] - z[second]).norm(dim=-1)  # (pairs, B)
    return distances.pow(alpha).mean()


@float32_loss
def info_nce_loss(embeddings: Tensor, *, temperature: float = 0.2) -> Tensor:
    """InfoNCE / NT-Xent over the M·B normalised embeddings (SimCLR; ``SPEC.md`` §5).

    ``ℓ(i, p) = −log[exp(ẑᵢ·ẑ_p/T) / Σ_{k≠i} exp(ẑᵢ·ẑ_k/T)]`` for every anchor i and every positive p
    (another view of i's image), averaged over all (i, p). With M = 2 this is SimCLR's NT-Xent on the
    2B embeddings; with M > 2 each anchor has M − 1 positives and the other views' rows are negatives
    of no one but themselves.

    Args:
        embeddings: (M, B, d) with M ≥ 2 views; normalised here.
        temperature: T; 0.1–0.5 is the usual range (lower: harder negatives, sharper gradients).
    """
    z = _normalized_views(embeddings, "info_nce_loss", min_views=2)
    views, batch, _ = z.shape
    flat = z.reshape(views * batch, -1)
    logits = (flat @ flat.T / temperature).fill_diagonal_(-math.inf)  # (MB, MB), no self-similarity
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # Row i's positives are the other views of its image: columns i + k·B (mod MB), k = 1 … M − 1. Gathered
    # by index rather than picked with a boolean mask, which would cost a host sync on a GPU.
    anchors = torch.arange(views * batch, device=z.device)
    positives = (anchors[:, None] + batch * torch.arange(1, views, device=z.device)) % (views * batch)  # (MB, M − 1)
    return -log_prob.gather(1, positives).mean()
