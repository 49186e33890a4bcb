"""MSBReg's three forces on embeddings (Moon, Buracas, Park, Kim, Canny, WACV 2023, arXiv 2207.03552).

Embeddings are particles: the multiview centroid loss attracts the views of one image, the singular
value loss spreads the batch evenly over all directions (a global dispersive force), and the Brownian
diffusive loss gives each embedding a random kick that needs no other particle (a local one).

The exact equations of the paper were not available to us (no public code); the forms below are
reconstructed from its description (``SPEC.md`` §3) and say where they had to choose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.losses.precision import float32_loss

CENTROID_VARIANTS = ("per_view", "mean")


def _as_views(x: Tensor, name: str) -> Tensor:
    """(N, d) → (1, N, d); (M, N, d) unchanged; anything else is an error."""
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"{name} wants (N, d) or (M, N, d) embeddings, got shape {tuple(x.shape)}")
    return x


@float32_loss
def multiview_centroid_loss(predictions: Tensor, targets: Tensor, *, variant: str = "per_view") -> Tensor:
    """Pull the online predictions of all M views of an image to the target embeddings' centroid.

    ``c = sg(1/M Σ_m ẑ'_m)`` (centroid of the normalised target projections of the M views), then

    - ``variant="per_view"``: ``L_MC = mean_n 1/M Σ_m ‖p̂_m − c‖²`` (each view to the centroid);
    - ``variant="mean"``: ``L_MC = mean_n ‖1/M Σ_m p̂_m − c‖²`` (online centroid to target centroid).

    ``p̂ = p/‖p‖``. The centroid is not re-normalised (it lies inside the ball), so ``per_view`` is
    zero exactly when all views' predictions and targets coincide. A reconstruction from the
    paper's description: its exact normalisation was not available.

    Args:
        predictions: (M, N, d) online predictions, M ≥ 2 views.
        targets: (M, N, d) target projections of the same views; detached here (stop-gradient).
        variant: ``"per_view"`` or ``"mean"``.

    Returns:
        A scalar, float32 at least, also under autocast.
    """
    if predictions.ndim != 3 or predictions.shape != targets.shape or predictions.shape[0] < 2:
        raise ValueError(f"multiview_centroid_loss wants (M, N, d) predictions and targets with M >= 2 views, "
                         f"got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    if variant not in CENTROID_VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {CENTROID_VARIANTS}")
    p = F.normalize(predictions, dim=-1)
    centroid = F.normalize(targets.detach(), dim=-1).mean(dim=0)  # (N, d)
    if variant == "mean":
        return (p.mean(dim=0) - centroid).square().sum(dim=-1).mean()
    return (p - centroid).square().sum(dim=-1).mean()


SINGULAR_VALUE_TARGETS = ("mean", "uniform")


@float32_loss
def singular_value_loss(embeddings: Tensor, *, target: str = "uniform", form: str = "auto") -> Tensor:
    """Spread of the batch covariance's eigenvalues around a flat spectrum: zero for an isotropic batch.

    Rows are L2-normalised then centred, ``Z̃ = ẑ − mean_n ẑ`` (N × d), with covariance
    ``C = Z̃ᵀZ̃/(N−1)`` whose d eigenvalues are ``λ_k = σ_k²/(N−1)`` (σ_k the singular values of Z̃,
    padded with zeros when N ≤ d), and

    - ``target="uniform"`` (default): ``L_SV = Σ_k (λ_k − 1/d)² = ‖C − I/d‖²_F``: the covariance of the
      uniform law on the sphere (unit rows, mean 0). It flattens the spectrum *and* pushes the
      variance up, so a batch collapsed to a point costs ``1/d``; close to SFRIK's degree-2 term (SPEC §4).
    - ``target="mean"`` (SPEC §3): ``L_SV = Σ_k (λ_k − λ̄)² = ‖C − (tr C/d)·I‖²_F = Σλ_k² − (Σλ_k)²/d``.
      It flattens the spectrum at whatever scale the batch has: ``(1 − 1/d)·λ²`` when one direction
      carries all the variance λ — but it also vanishes as the batch shrinks to a point (it scales
      with the squared spread). Added to BYOL with weight 10 it did exactly that on Fashion-MNIST:
      the projections shrank to a point (per-dimension std 0.008 against 0.077 without it).

    The paper describes this term only in words ("pushes the particle system toward spatially
    homogeneous density"); both forms are reconstructions.

    Both targets need only ``Σλ_k = tr C`` and ``Σλ_k² = ‖C‖²_F``, and two forms give them:
    ``"covariance"`` builds C (O(Nd²), d × d memory: cheap when d ≪ N); ``"gram"`` builds the N × N
    Gram matrix ``G = Z̃Z̃ᵀ/(N−1)``, which has C's nonzero eigenvalues, so ``‖C‖_F = ‖G‖_F``
    (O(N²d), no d × d matrix: for d > N). ``"auto"`` picks the covariance form when d ≤ N. Neither
    decomposes a matrix: no SVD, whose convergence check would make the host wait on a GPU every step,
    and gradients that are polynomials in Z̃.

    Args:
        embeddings: (N, d) or (M, N, d); with M views the loss is averaged over views, each view's
            batch centred on its own.
        target: ``"mean"`` or ``"uniform"``, the flat spectrum the eigenvalues are pulled to.
        form: ``"auto"``, ``"covariance"`` or ``"gram"``.

    Returns:
        A scalar, float32 at least (autocast is off inside: bf16 would swamp the small eigenvalues).
    """
    if target not in SINGULAR_VALUE_TARGETS:
        raise ValueError(f"target={target!r} is not one of {SINGULAR_VALUE_TARGETS}")
    if form not in ("auto", "covariance", "gram"):
        raise ValueError(f"form={form!r} is not one of auto, covariance, gram")
    views = _as_views(embeddings, "singular_value_loss")
    num, dim = views.shape[1:]
    if num < 2:
        raise ValueError(f"singular_value_loss needs at least 2 embeddings per view, got {num}")
    z = F.normalize(views, dim=-1)
    z = z - z.mean(dim=1, keepdim=True)  # (M, N, d)
    if form == "covariance" or (form == "auto" and dim <= num):
        cov = z.transpose(1, 2) @ z / (num - 1)  # (M, d, d)
        level = torch.diagonal(cov, dim1=1, dim2=2).mean(dim=1) if target == "mean" else torch.full(cov.shape[:1], 1 / dim, dtype=z.dtype, device=z.device)
        per_view = (cov - level[:, None, None] * torch.eye(dim, dtype=z.dtype, device=z.device)).square().sum(dim=(1, 2))
    else:
        gram = z @ z.transpose(1, 2) / (num - 1)  # (M, N, N)
        total = torch.diagonal(gram, dim1=1, dim2=2).sum(dim=1)  # Σλ = tr G = tr C
        squares = gram.square().sum(dim=(1, 2))  # Σλ² = ‖G‖²_F = ‖C‖²_F
        if target == "mean":  # Σλ² − 2λ̄Σλ + dλ̄² with λ̄ = Σλ/d
            per_view = squares - total.square() / dim
        else:  # Σλ² − 2Σλ/d + d/d²
            per_view = squares - 2 * total / dim + 1 / dim
    return per_view.mean()


@float32_loss
def brownian_diffusive_loss(embeddings: Tensor, *, sigma: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """A random kick for every embedding: ``L_BD = −mean_i ⟨ẑ_i, η_i⟩``, fresh ``η_i ~ N(0, σ²I)``.

    Its gradient with respect to ẑ_i is ``−η_i / n`` (n embeddings in all): independent of every other
    embedding and of the loss value, so gradient descent moves each embedding by Brownian motion on
    the sphere, whose stationary law is uniform. The value itself is noise around 0 (it is logged
    only to show the term is active). A reconstruction from the paper's description.

    Args:
        embeddings: (..., d) embeddings (normalised here); all leading dimensions are particles.
        sigma: standard deviation of the noise (σ ≥ 0).
        generator: where the noise comes from; the training loop passes one seeded per step, so
            runs (and resumes) draw the same kicks. None: torch's global generator.

    Returns:
        A scalar, float32 at least.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    z = F.normalize(embeddings, dim=-1)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype) * sigma
    return -(z * noise).sum(dim=-1).mean()
