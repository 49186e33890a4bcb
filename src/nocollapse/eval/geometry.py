"""Geometry of a representation: how many directions it really uses."""

from __future__ import annotations

import torch
from torch import Tensor

RANKME_MAX_SAMPLES = 25_600  # Garrido et al. estimate RankMe on at most this many embeddings


def singular_spectrum(features: Tensor) -> Tensor:
    """Singular values (descending, float64) of the (N, D) feature matrix, as used (not centred)."""
    if features.ndim != 2 or min(features.shape) < 1:
        raise ValueError(f"singular_spectrum wants an (N, D) matrix with N, D >= 1, got shape {tuple(features.shape)}")
    return torch.linalg.svdvals(features.detach().to(torch.float64))


def rankme(features: Tensor, *, eps: float = 1e-7, max_samples: int = RANKME_MAX_SAMPLES) -> float:
    """RankMe (Garrido et al., ICML 2023): ``exp(−Σ_k p_k log p_k)``, ``p_k = σ_k/Σσ + eps``.

    The exponential of the entropy of the normalised singular values of the (N, D) features (the
    first ``max_samples`` rows): a smooth rank between 1 (every row on one line: collapse) and
    ``min(N, D)`` (isotropic). Dimensional collapse that uniformity hides shows here. All-zero
    features (total collapse) give 0.
    """
    sigma = singular_spectrum(features[:max_samples])
    if sigma.sum() == 0:
        return 0.0
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))
