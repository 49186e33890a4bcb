"""Geometry of a representation: where its embeddings lie on the sphere and how many directions it uses.

``SPEC.md`` §6: alignment of positive pairs and uniformity (Wang & Isola, computed by the very loss
functions of :mod:`nocollapse.losses.uniformity`), RankMe and the singular spectrum (dimensional
collapse, which uniformity hides), class separability, and the per-dimension standard deviation of
the normalised embeddings (SimSiam's collapse signal). :func:`geometry_scores` gives them all for one
representation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.errors import UserError
from nocollapse.eval.checks import check_geometry_split
from nocollapse.losses.uniformity import alignment_loss, uniformity_loss

RANKME_MAX_SAMPLES = 25_600  # Garrido et al. estimate RankMe on at most this many embeddings
RANKME_EPS = 1e-7  # added to each p_k, as in the paper
UNIFORMITY_SAMPLES = 4096  # uniformity is O(N²) in time and memory: (4096)² float32 pairs ≈ 64 MB
SUBSET_SEED = 0  # the uniformity subset is fixed, so every row and every epoch is measured on the same points
COLLAPSED_DISTANCE = 1e-9  # mean cosine distances below this are float64 rounding of exactly 0


def singular_spectrum(features: Tensor) -> Tensor:
    """Singular values (descending, float64) of the (N, D) feature matrix, as used (not centred)."""
    if features.ndim != 2 or min(features.shape) < 1:
        raise ValueError(f"singular_spectrum wants an (N, D) matrix with N, D >= 1, got shape {tuple(features.shape)}")
    return torch.linalg.svdvals(features.detach().to(torch.float64))


def _rankme_of_spectrum(sigma: Tensor, eps: float) -> float:
    """RankMe of the singular values ``sigma``, for callers that also keep the spectrum (one SVD)."""
    if sigma.sum() == 0:
        return 0.0
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def rankme(features: Tensor, *, eps: float = RANKME_EPS, max_samples: int = RANKME_MAX_SAMPLES) -> float:
    """RankMe (Garrido et al., ICML 2023): ``exp(−Σ_k p_k log p_k)``, ``p_k = σ_k/Σσ + eps``.

    The exponential of the entropy of the normalised singular values of the (N, D) features (the
    first ``max_samples`` rows): a smooth rank between 1 (every row on one line: collapse) and
    ``min(N, D)`` (isotropic). Dimensional collapse that uniformity hides shows here. All-zero
    features (total collapse) give 0.
    """
    return _rankme_of_spectrum(singular_spectrum(features[:max_samples]), eps)


def _check_features(features: Tensor, who: str) -> None:
    if features.ndim != 2 or not features.dtype.is_floating_point or features.shape[0] < 2:
        raise ValueError(f"{who} wants (N, d) floating-point features with N >= 2, got shape {tuple(features.shape)} "
                         f"and dtype {features.dtype}")


def embedding_std(features: Tensor) -> float:
    """``mean_k std_i(ẑ_ik)`` with ``ẑ_i = z_i/‖z_i‖``: SimSiam's collapse signal (Chen & He, 2021).

    The per-dimension standard deviation (over the N ≥ 2 rows, normalised by N − 1) of the
    ℓ2-normalised (N, d) features, averaged over the d dimensions, in float64. About ``1/√d`` when
    the embeddings spread over the sphere, 0 when they collapse to one direction.
    """
    _check_features(features, "embedding_std")
    z = F.normalize(features.detach().to(torch.float64), dim=1)
    return float(z.std(dim=0).mean())


def class_separability(features: Tensor, labels: Tensor) -> float:
    """Mean inter-class cosine distance / mean intra-class cosine distance of the (N, d) features.

    With unit vectors ``ẑ_i = z_i/‖z_i‖`` and cosine distance ``1 − ẑ_i·ẑ_j``: the intra-class mean
    runs over the ordered pairs ``i ≠ j`` of the same class, the inter-class mean over the pairs of
    different classes. Above 1 when classes are farther apart than their members are from each
    other; about 1 when labels are unrelated to the geometry.

    Exact and O(N·d) (float64), never forming the N × N similarities: with ``S_c = Σ_{i∈c} ẑ_i``,
    ``Σ_{i≠j∈c} ẑ_i·ẑ_j = ‖S_c‖² − Σ_{i∈c}‖ẑ_i‖²`` and ``Σ_{c≠c'} S_c·S_c' = ‖Σ_c S_c‖² − Σ_c‖S_c‖²``.
    A zero row normalises to 0 (cosine 0 with everything). When the mean intra-class distance is 0
    (below ``COLLAPSED_DISTANCE``, float rounding) the ratio is ``inf`` if classes still differ and 1
    if every embedding points the same way (no class structure).

    Args:
        features: (N, d) floating point.
        labels: (N,) integer class labels, any values; at least two classes, one of them with two rows.
    """
    _check_features(features, "class_separability")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0] or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"class_separability wants (N,) integer labels for {features.shape[0]} rows, "
                         f"got shape {tuple(labels.shape)} and dtype {labels.dtype}")
    z = F.normalize(features.detach().to(torch.float64), dim=1)
    _, classes = torch.unique(labels.to(z.device), return_inverse=True)
    counts = torch.bincount(classes).to(torch.float64)  # (C,)
    if counts.numel() < 2 or counts.max() < 2:
        raise ValueError(f"class_separability needs two classes and a class with two rows, got class sizes {counts.long().tolist()}")
    sums = torch.zeros(counts.numel(), z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, classes, z)  # (C, d)
    class_norms = sums.square().sum(dim=1)  # ‖S_c‖², (C,)
    self_pairs = z.square().sum()  # Σ_i ‖ẑ_i‖²: N, less the zero rows
    n = counts.sum()
    intra_similarity = (class_norms.sum() - self_pairs) / (counts * (counts - 1)).sum()
    inter_similarity = (sums.sum(dim=0).square().sum() - class_norms.sum()) / (n * n - counts.square().sum())
    intra, inter = float(1 - intra_similarity), float(1 - inter_similarity)
    if intra < COLLAPSED_DISTANCE:
        return math.inf if inter >= COLLAPSED_DISTANCE else 1.0
    return inter / intra


@dataclass
class GeometryScores:
    """The geometry of one representation's (N, dim) test embeddings (``SPEC.md`` §6).

    ``alignment`` (None when no positive pairs were given) and ``uniformity`` follow Wang & Isola
    (lower is better for both; uniformity ≈ −4 when spread, 0 when collapsed); ``rankme`` lies in
    [1, min(N, dim)]; ``separability`` > 1 when classes stand apart (None for unlabelled images); ``std`` ≈ 1/√dim when spread, 0
    when collapsed; ``spectrum`` holds the singular values RankMe is computed from, descending.
    """

    dim: int
    alignment: float | None
    uniformity: float
    rankme: float
    separability: float | None
    std: float
    spectrum: list[float]

    def to_dict(self, *, spectrum: bool = True) -> dict:
        """The scores as plain JSON values; ``spectrum=False`` leaves out the dim-long spectrum."""
        scores = {"dim": self.dim, "alignment": self.alignment, "uniformity": self.uniformity, "rankme": self.rankme,
                  "separability": self.separability, "std": self.std}
        return {**scores, "spectrum": self.spectrum} if spectrum else scores

    def summary(self) -> str:
        """One short line for a training log."""
        alignment = "-" if self.alignment is None else f"{self.alignment:.3f}"
        separability = "-" if self.separability is None else f"{self.separability:.3f}"
        return (f"align {alignment} unif {self.uniformity:.3f} RankMe {self.rankme:.1f}/{self.dim} "
                f"sep {separability} std {self.std:.4f}")


@torch.no_grad()
def geometry_scores(
    features: Tensor,
    labels: Tensor | None,
    *,
    views: Tensor | None = None,
    uniformity_samples: int = UNIFORMITY_SAMPLES,
) -> GeometryScores:
    """Alignment, uniformity, RankMe, class separability, embedding std and singular spectrum.

    - alignment ``mean ‖ẑ_m − ẑ_m'‖²`` over the images and view pairs of ``views`` (M, B, dim), M ≥ 2
      embeddings of positive views (:func:`~nocollapse.losses.alignment_loss`); None without views.
    - uniformity ``log mean_{i≠j} exp(−2‖ẑᵢ − ẑⱼ‖²)`` (:func:`~nocollapse.losses.uniformity_loss`) on
      a fixed subset of ``uniformity_samples`` rows (drawn with ``SUBSET_SEED``; all rows when there
      are fewer): its memory and time grow as the square of the rows.
    - RankMe and the singular spectrum of the first ``RANKME_MAX_SAMPLES`` rows (:func:`rankme`).
    - :func:`class_separability` and :func:`embedding_std` over all rows (both O(N·dim)).

    Args:
        features: (N, dim) floating-point embeddings of the test images, N ≥ 2.
        labels: (N,) integer class labels of those images, or None (unlabelled: no separability).
        views: (M, B, dim) embeddings of M augmented views of B images, or None.
        uniformity_samples: rows for uniformity, ≥ 2.

    Raises :class:`~nocollapse.errors.UserError` when the features hold NaN or Inf, or when the labels
    give too few rows or classes for the scores (:func:`~nocollapse.eval.checks.check_geometry_split`).
    """
    if labels is None:
        if features.ndim == 2 and features.shape[0] < 2:
            raise UserError(f"geometry: {features.shape[0]} image(s); uniformity and the spread need at least 2")
    elif features.ndim == 2 and labels.ndim == 1:  # wrong shapes are the caller's mistake (ValueError below); too small a split is the data's
        check_geometry_split(features, labels)
    _check_features(features, "geometry_scores")
    if uniformity_samples < 2:
        raise ValueError(f"uniformity_samples must be at least 2, got {uniformity_samples}")
    if views is not None and (views.ndim != 3 or views.shape[-1] != features.shape[1]):
        raise ValueError(f"views must be (M, B, {features.shape[1]}) embeddings of the same network as the features, "
                         f"got shape {tuple(views.shape)}")
    features = features.detach()
    subset = features
    if features.shape[0] > uniformity_samples:
        rows = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(SUBSET_SEED))[:uniformity_samples]
        subset = features[rows.to(features.device)]
    sigma = singular_spectrum(features[:RANKME_MAX_SAMPLES])
    return GeometryScores(
        dim=features.shape[1],
        alignment=None if views is None else float(alignment_loss(views.detach())),
        uniformity=float(uniformity_loss(subset)),
        rankme=_rankme_of_spectrum(sigma, RANKME_EPS),
        separability=None if labels is None else class_separability(features, labels),
        std=embedding_std(features),
        spectrum=sigma.tolist(),
    )
