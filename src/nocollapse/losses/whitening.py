"""W-MSE: whitening MSE loss (Ermolov et al., ICML 2021, arXiv 2007.06346, eq. 3–6 and Alg. 1).

Each view's embeddings are whitened in sub-batches of ``w_size`` rows (Cholesky whitening), then the
whitened views of the same image are pulled together with the normalised MSE ``2 − 2·cos``. Whitening
fixes the covariance of every sub-batch to the identity, so the trivial solution (all embeddings equal)
is ruled out by construction: there is nothing to collapse to, and no negatives are needed.

Agreement with the official code (github.com/htdt/self-supervised, ``methods/whitening.py`` and
``methods/w_mse.py``), point by point:

* covariance normalisation: they divide by ``m − 1`` (``T.shape[-1] − 1`` with ``T`` of shape (d, m)),
  as we do;
* shrinkage: ``(1 − ε)·C + ε·I`` with ``w_eps`` defaulting to 0, as here;
* whitening matrix: the inverse Cholesky factor from a triangular solve against ``I``, applied as a
  1×1 convolution, i.e. ``z_i = W (x_i − μ)``; we solve against the data directly (same result);
* one ``torch.randperm`` per ``w_iter`` round, shared by all views, ``view(-1, w_size)`` (so N must be
  divisible by ``w_size``); each group of each view is whitened on its own;
* loss: ``Σ_rounds Σ_{i<j} norm_mse(z_i, z_j) / (w_iter · M(M−1)/2)``, where ``norm_mse`` is the mean over
  all N rows — with equal-sized groups that is also the mean over groups of the per-group means;
* precision: they run in whatever dtype the head produced (no AMP in their training); we always whiten in
  float32 (or float64) because bf16/fp16 Cholesky of a covariance fails or is badly inaccurate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.errors import CollapseError
from nocollapse.losses.precision import float32_loss


class WhiteningError(CollapseError):
    """The Cholesky factorisation of a sub-batch covariance failed: it is not positive definite.

    In W-MSE this almost always means the embeddings collapsed onto fewer than ``d`` directions (or went
    NaN/Inf), so it is reported rather than masked.

    Attributes:
        min_eigenvalue: smallest eigenvalue of the offending shrunk covariance ``(1 − ε)C + εI``
            (NaN when the embeddings are not finite).
        view: index of the view whose sub-batch failed, or None when not known (plain :func:`whiten`).
    """

    def __init__(self, message: str, *, min_eigenvalue: float, view: int | None = None) -> None:
        super().__init__(message)
        self.min_eigenvalue = min_eigenvalue
        self.view = view


def check_whitening_shapes(batch_size: int, dim: int, w_size: int) -> None:
    """Raise ValueError unless a batch of ``batch_size`` images with ``dim``-dimensional embeddings can be
    split into whitening sub-batches of ``w_size`` rows. Call it at start-up, before the first step.

    A sub-batch of m rows has a covariance of rank at most m − 1, so it can only be whitened (be positive
    definite) when ``w_size > dim``; the paper's working rule is ``w_size = 2·dim``.
    """
    if dim < 1:
        raise ValueError(f"the embedding dimension must be positive, got d={dim}")
    if w_size <= dim:
        raise ValueError(
            f"w_size must exceed the embedding dimension d={dim}, got w_size={w_size}: a sub-batch of "
            f"m rows has a covariance of rank at most m − 1, which cannot be whitened when m ≤ d; "
            f"the working rule is w_size = 2d = {2 * dim}"
        )
    if batch_size < w_size:
        raise ValueError(
            f"batch_size={batch_size} is smaller than w_size={w_size}: every whitening sub-batch needs "
            f"w_size images; raise the batch size or lower w_size (it must stay above d={dim})"
        )
    if batch_size % w_size != 0:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by w_size={w_size}: the batch is split into "
            f"batch_size // w_size equal sub-batches; use a batch size that is a multiple of w_size "
            f"(e.g. {batch_size - batch_size % w_size or w_size})"
        )


def _check_whitening_dtype(dtype: torch.dtype) -> None:
    """Refuse a dtype below float32: a bf16/fp16 Cholesky of a covariance fails or loses the small eigenvalues."""
    if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
        raise ValueError(f"whitening needs float32 or float64, got dtype={dtype}")


def _whiten_groups(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Cholesky-whiten every (m, d) matrix in a batch ``x`` of shape (..., m, d), all at once.

    Returns ``(z, cov_s, info)``: ``z`` (..., m, d) whitened rows, ``cov_s`` (..., d, d) the shrunk
    covariances, ``info`` (...) the ``cholesky_ex`` status (> 0 where a covariance is not positive
    definite; ``z`` is garbage there). Nothing here synchronises with the device.
    """
    m, d = x.shape[-2], x.shape[-1]
    mean = x.mean(dim=-2, keepdim=True)  # (..., 1, d)
    centred = x - mean  # (..., m, d)
    # Unbiased covariance (m − 1), as the official code.
    cov = centred.mT @ centred / (m - 1)  # (..., d, d)
    if eps != 0.0:
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        cov = (1.0 - eps) * cov + eps * eye
    # cholesky_ex instead of cholesky: the latter checks for failure with a host sync inside every call;
    # we check ``info`` once per loss call instead.
    chol, info = torch.linalg.cholesky_ex(cov)  # chol: (..., d, d) lower triangular, cov = L Lᵀ
    # Rows z_i = L⁻¹ (x_i − μ), i.e. z = (x − μ) L⁻ᵀ: solve z Lᵀ = x − μ (upper-triangular, from the
    # right) — a triangular solve, never an explicit inverse.
    z = torch.linalg.solve_triangular(chol.mT, centred, upper=True, left=False)
    return z, cov, info


def _raise_if_failed(info: Tensor, cov: Tensor, eps: float, view_axis: bool) -> None:
    """Raise :class:`WhiteningError` if any ``info`` entry is positive.

    ``bool(...)`` is one host-device sync per loss call (all views, groups and rounds are checked at once);
    that is acceptable, and it is what turns a silent NaN loss into a clear error.
    """
    failed = info > 0
    if not bool(failed.any()):
        return
    first = tuple(int(i) for i in failed.nonzero()[0])  # batch index of the first failed covariance
    bad = cov[first].detach().double()  # (d, d)
    count, total = int(failed.sum()), failed.numel()
    view = first[0] if view_axis else None
    where = f"view {view}, " if view is not None else ""
    if not bool(torch.isfinite(bad).all()):
        raise WhiteningError(
            f"W-MSE whitening failed ({where}{count} of {total} sub-batches): the embeddings contain "
            f"NaN or Inf, so the covariance has no Cholesky factor (smallest eigenvalue: nan). Training "
            f"diverged: lower the learning rate or check the inputs; raising eps (now {eps}) will not help.",
            min_eigenvalue=float("nan"),
            view=view,
        )
    # Eigenvalues only in the failure path: eigvalsh is far slower than Cholesky.
    min_eigenvalue = float(torch.linalg.eigvalsh(bad)[0])
    raise WhiteningError(
        f"W-MSE whitening failed ({where}{count} of {total} sub-batches): the shrunk covariance "
        f"(1 − eps)·C + eps·I with eps={eps} is not positive definite (smallest eigenvalue "
        f"{min_eigenvalue:.3e}, d={bad.shape[-1]}). This usually means the embeddings collapsed "
        f"(rank < d): lower the learning rate, or raise eps (e.g. 1e-4) to shrink the covariance towards "
        f"the identity.",
        min_eigenvalue=min_eigenvalue,
        view=view,
    )


@float32_loss
def whiten(x: Tensor, *, eps: float = 0.0) -> Tensor:
    """Cholesky whitening of one sub-batch (or a batch of them).

    With ``m`` rows ``x_i ∈ ℝ^d``::

        μ   = 1/m Σ_i x_i
        C   = 1/(m − 1) Σ_i (x_i − μ)(x_i − μ)ᵀ        (unbiased, m − 1, as the official code)
        C_s = (1 − ε)·C + ε·I                        (shrinkage; ε = 1 gives z_i = x_i − μ)
        L   = cholesky(C_s)  (lower),  W = L⁻¹
        z_i = W (x_i − μ)                            so that 1/(m − 1) Σ_i z_i z_iᵀ = I when ε = 0

    ``W`` is never formed: ``z`` comes from a triangular solve. Gradients flow through μ, C, the
    Cholesky factor and the solve (W-MSE back-propagates through the whitening).

    Args:
        x: (m, d), or (..., m, d) to whiten many sub-batches independently in one batched call; m > d.
        eps: shrinkage ε ∈ [0, 1] towards the identity.

    Returns:
        z with the shape of ``x``, in float32 at least (float64 stays float64), also under autocast.

    Raises:
        WhiteningError: a covariance is not positive definite (collapsed embeddings, or m ≤ d).
    """
    if x.ndim < 2:
        raise ValueError(f"whiten wants (..., m, d) rows, got shape {tuple(x.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1], got {eps}")
    z, cov, info = _whiten_groups(x, eps)
    _raise_if_failed(info, cov, eps, view_axis=False)
    return z


@float32_loss
def whitened_mse(
    views: Tensor,
    *,
    w_size: int,
    w_iter: int = 1,
    eps: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """W-MSE loss of M ≥ 2 views of the same N images.

    Each of ``w_iter`` rounds draws one random permutation of the N images (shared by all views) and
    splits it into ``G = N / w_size`` groups; every group of every view is whitened on its own
    (:func:`whiten`), giving ``z_v[n]``. With ``P = M(M−1)/2`` view pairs::

        L = 1/(w_iter · P) Σ_rounds Σ_{i<j} 1/N Σ_n (2 − 2·cos(z_i[n], z_j[n]))

    i.e. the mean over rounds, pairs and images of the normalised MSE ‖ẑ_i − ẑ_j‖² — exactly the official
    code's ``loss /= w_iter * num_pairs`` over ``norm_mse_loss`` (a mean over all N rows, which with equal
    groups is also the mean over groups). Range [0, 4]. W-MSE 2 is M = 2, W-MSE 4 is M = 4.

    All groups of all views and rounds are whitened in one batched Cholesky/solve on a
    (M, w_iter, G, w_size, d) tensor — no Python loop over groups.

    Args:
        views: (M, N, d) embeddings (head outputs); any float dtype, also produced under autocast.
        w_size: rows per whitening sub-batch; must exceed d and divide N (working rule: 2d).
        w_iter: number of independent permutations (rounds) averaged; the paper uses 1.
        eps: shrinkage ε ∈ [0, 1] of the covariance towards I; 0 as in the paper.
        generator: source of the permutations; must live on ``views.device``. None: the global RNG.
        dtype: float32 (default) or float64: all whitening and loss maths run in it, with autocast
            disabled, whatever ``views.dtype`` is.

    Returns:
        A scalar in ``dtype``.

    Raises:
        ValueError: bad shapes (``views`` not (M, N, d) with M ≥ 2, or see :func:`check_whitening_shapes`).
        WhiteningError: a sub-batch covariance is not positive definite — usually collapse.
    """
    if views.ndim != 3 or views.shape[0] < 2:
        raise ValueError(
            f"whitened_mse wants (M, N, d) embeddings of M >= 2 views of the same N images, "
            f"got shape {tuple(views.shape)}"
        )
    n_views, batch_size, dim = views.shape
    check_whitening_shapes(batch_size, dim, w_size)
    if w_iter < 1:
        raise ValueError(f"w_iter must be at least 1, got {w_iter}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1], got {eps}")
    _check_whitening_dtype(dtype)
    groups = batch_size // w_size

    x = views.to(dtype)  # (M, N, d) in the dtype asked for, whatever the caller's
    # One permutation per round, drawn in order from ``generator`` (reproducible with a seeded one).
    perms = torch.stack(
        [torch.randperm(batch_size, generator=generator, device=views.device) for _ in range(w_iter)]
    )  # (w_iter, N)
    grouped = x[:, perms].reshape(n_views, w_iter, groups, w_size, dim)  # (M, R, G, w, d)
    z, cov, info = _whiten_groups(grouped, eps)
    _raise_if_failed(info, cov, eps, view_axis=True)
    z = F.normalize(z, dim=-1)  # (M, R, G, w, d); rows of the same image stay aligned across views
    first, second = torch.triu_indices(n_views, n_views, offset=1, device=views.device)
    cos = (z[first] * z[second]).sum(dim=-1)  # (P, R, G, w)
    return (2 - 2 * cos).mean()
