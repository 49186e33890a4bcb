"""Kernel uniformity: the MMD between a batch and the uniform law on the sphere (SFRIK, ``SPEC.md`` §4).

A rotation-invariant kernel on the unit sphere ``S^{q−1}`` is a dot-product kernel ``K(u, v) = φ(uᵀv)``.
The squared maximum mean discrepancy between the empirical law of the normalised batch
``ẑᵢ = zᵢ/‖zᵢ‖`` (i = 1…N) and the uniform law U is

    ``MMD²(P̂, U) = Ψ(Z) − E_{u,v∼U} φ(uᵀv)``,   ``Ψ(Z) = (1/N²) Σ_{i,j} φ(ẑᵢᵀẑⱼ)``,

the second term a constant of φ and q; ``kernel_uniformity`` returns Ψ. The sum includes i = j, as
``SPEC.md`` writes it: Ψ minus the constant is then the exact MMD² of the batch's own law (a
V-statistic, ≥ 0), not the unbiased U-statistic estimate of the population's; one point scores φ(1).

By Schoenberg's theorem φ is positive definite on ``S^{q−1}`` exactly when ``φ = Σ_ℓ b_ℓ P_ℓ^{(q)}``
with every ``b_ℓ ≥ 0``, where ``P_ℓ^{(q)}`` are the Gegenbauer polynomials of dimension q normalised
to ``P_ℓ(1) = 1`` (Chebyshev for q = 2, Legendre for q = 3). ``E_{v∼U} P_ℓ(uᵀv) = 0`` for ℓ ≥ 1, so
without the (irrelevant) constant b₀ the constant above is 0: Ψ *is* the MMD², zero exactly when the
batch's moments up to degree L equal the uniform law's (a spherical L-design). The mean of each
degree over the batch has a closed form in the batch's moments:

    ``mean P₁ = ‖z̄‖²`` (centring),
    ``mean P₂ = q/(q−1)·‖C − I/q‖²_F``, ``C = (1/N) Σ ẑᵢẑᵢᵀ`` (whitening: the Barlow Twins/VICReg family),
    ``mean P₃ = ((q+2)‖T‖²_F − 3‖z̄‖²)/(q−1)``, ``T = (1/N) Σ ẑᵢ⊗ẑᵢ⊗ẑᵢ``.

So Ψ can be computed two ways: from the N × N Gram matrix, O(N²q) time (cheap when q > N, as for
SFRIK's q = 8192–32768), or from the moments, O(N q^L) time and O(q^L) memory (cheap when q < N).

The Gaussian kernel on the sphere ``exp(−t‖u − v‖²) = exp(−2t(1 − uᵀv))`` is a dot-product kernel
with an infinite expansion (Gram path only). Wang & Isola's uniformity ``U = log mean_{i≠j}
exp(−t‖ẑᵢ − ẑⱼ‖²)`` (``uniformity_loss``) is a monotone transform of its Ψ: with the diagonal,
``Ψ = (1 + (N − 1)·exp(U))/N`` for one view, so the kernel family contains it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from nocollapse.losses.precision import float32_loss

PATHS = ("auto", "gram", "moments")
MAX_MOMENT_DEGREE = 3
DEFAULT_MAX_MOMENT_BYTES = 2 * 2**30


def _check_gegenbauer(degree: int, dim: int) -> None:
    if degree < 0:
        raise ValueError(f"a Gegenbauer polynomial's degree must be >= 0, got {degree}")
    if dim < 2:
        raise ValueError(f"Gegenbauer polynomials of dimension q live on the sphere S^(q-1) and need q >= 2, got q={dim}")


def gegenbauer_all(t: Tensor, degree: int, dim: int) -> list[Tensor]:
    """``[P_0(t), …, P_degree(t)]``, the normalised Gegenbauer polynomials of dimension ``dim`` (= q).

    Three-term recurrence from ``P_0 = 1``, ``P_1 = t``:

        ``P_{ℓ+1} = ((2ℓ + q − 2)·t·P_ℓ − ℓ·P_{ℓ−1}) / (ℓ + q − 2)``,  ℓ ≥ 1,

    normalised so that ``P_ℓ(1) = 1`` (and ``|P_ℓ| ≤ 1`` on [−1, 1]). For q = 2 it is Chebyshev's
    ``T_{ℓ+1} = 2t·T_ℓ − T_{ℓ−1}`` (the unnormalised Gegenbauer ``C_ℓ^0`` vanishes, its normalised limit
    does not), for q = 3 Bonnet's recurrence of the Legendre polynomials. The forward recurrence is
    stable on [−1, 1]: float32 stays within a few 1e-7 of the exact values up to q = 32768, ℓ = 8.

    Args:
        t: cosines, any shape; values in [−1, 1].
        degree: L ≥ 0.
        dim: q ≥ 2, the dimension of the space the unit vectors live in.
    """
    _check_gegenbauer(degree, dim)
    polys = [torch.ones_like(t), t]
    for ell in range(1, degree):
        polys.append(((2 * ell + dim - 2) * t * polys[ell] - ell * polys[ell - 1]) / (ell + dim - 2))
    return polys[: degree + 1]


def gegenbauer(t: Tensor, degree: int, dim: int) -> Tensor:
    """``P_degree^{(dim)}(t)``, the normalised Gegenbauer polynomial (see ``gegenbauer_all``)."""
    return gegenbauer_all(t, degree, dim)[degree]


@dataclass(frozen=True)
class GegenbauerKernel:
    """The dot-product kernel ``φ(t) = Σ_{ℓ=1..L} b_ℓ P_ℓ^{(q)}(t)`` on ``S^{q−1}``.

    ``weights[ℓ − 1]`` is b_ℓ: b₀ is left out, a constant that moves Ψ by b₀ and no gradient. Every
    ``b_ℓ ≥ 0`` (Schoenberg: a negative weight makes the kernel indefinite, and Ψ could then fall
    below 0 and reward a non-uniform batch). ``φ(1) = Σ b_ℓ`` is Ψ's maximum, reached by a collapsed
    batch; Ψ ≥ 0, zero for a spherical L-design (e.g. the 2q points ±eₖ for L ≤ 3).
    """

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        weights = tuple(float(w) for w in self.weights)  # a list is accepted: the dataclass stays hashable
        if not weights:
            raise ValueError("GegenbauerKernel needs at least one weight (b_1, b_2, ...)")
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"GegenbauerKernel weights must be finite and >= 0, got {weights}: by Schoenberg's theorem a "
                             f"negative b_l makes the kernel not positive definite, and Psi would no longer be an MMD")
        object.__setattr__(self, "weights", weights)

    @property
    def degree(self) -> int:
        """The highest ℓ with ``b_ℓ > 0`` (0 for the zero kernel): what the moment path must reach."""
        return max((ell for ell, w in enumerate(self.weights, start=1) if w > 0), default=0)

    def weight(self, ell: int) -> float:
        """b_ℓ (0 beyond the last weight)."""
        return self.weights[ell - 1] if 1 <= ell <= len(self.weights) else 0.0

    def __call__(self, cos: Tensor, dim: int) -> Tensor:
        """``φ(cos)`` for unit vectors in dimension ``dim``; differentiable."""
        polys = gegenbauer_all(cos, self.degree, dim)
        return _weighted_sum([(self.weight(ell), polys[ell]) for ell in range(1, self.degree + 1)], cos)

    def value_and_slope(self, cos: Tensor, dim: int, *, slope: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(φ(cos), φ'(cos))`` (or ``(φ, None)``), not differentiable: the Gram path's forward.

        The slope comes from ``P_ℓ^{(q)}' = ℓ(ℓ+q−2)/(q−1) · P_{ℓ−1}^{(q+2)}``.
        """
        value = _gegenbauer_series(cos, (0.0, *self.weights[: self.degree]), dim)
        if not slope:
            return value, None
        slope_weights = [self.weight(ell) * ell * (ell + dim - 2) / (dim - 1) for ell in range(1, self.degree + 1)]
        return value, _gegenbauer_series(cos, slope_weights or [0.0], dim + 2)


def _weighted_sum(terms: list[tuple[float, Tensor]], like: Tensor) -> Tensor:
    """``Σ w·p`` over the terms with w ≠ 0; zeros like ``like`` if there are none."""
    products = [w * p for w, p in terms if w != 0]
    return sum(products[1:], products[0]) if products else like * 0  # (not zeros_like: keep the graph)


def _gegenbauer_series(cos: Tensor, coefficients: Sequence[float], dim: int) -> Tensor:
    """``Σ_ℓ c_ℓ P_ℓ^{(dim)}(cos)``, ℓ = 0…len−1, by ``gegenbauer_all``'s recurrence run in place.

    Not differentiable. On the Gram path's (block, N) tiles, a fresh tensor for every operation costs
    more than the arithmetic: out of place, SFRIK's 3-degree series doubled the Gram path's time at q = 256.
    """
    out = torch.full_like(cos, coefficients[0])
    if len(coefficients) > 1:
        out.add_(cos, alpha=coefficients[1])
    if len(coefficients) > 2:
        prev, cur = torch.ones_like(cos), cos.clone()  # P_{ℓ−1}, P_ℓ; a clone, as the buffers are overwritten
        for ell in range(1, len(coefficients) - 1):
            # P_{ℓ+1} written over P_{ℓ−1}'s buffer
            prev.mul_(-ell / (ell + dim - 2)).addcmul_(cos, cur, value=(2 * ell + dim - 2) / (ell + dim - 2))
            prev, cur = cur, prev
            out.add_(cur, alpha=coefficients[ell + 1])
    return out


SFRIK_KERNEL = GegenbauerKernel((1.0, 40.0, 40.0))
"""SFRIK's default kernel: b = (1, 40, 40) for ℓ = 1, 2, 3 (``SPEC.md`` §4)."""


@dataclass(frozen=True)
class GaussianKernel:
    """The Gaussian kernel on the sphere ``exp(−t‖u − v‖²) = exp(−2t(1 − uᵀv))``.

    Positive definite in every dimension, with an infinite Gegenbauer expansion: Ψ is computed from the
    Gram matrix only. Ψ ∈ (0, 1], 1 for a collapsed batch; ``MMD² = Ψ − E_{u,v∼U} exp(−2t(1 − uᵀv))``.
    With t = 2 it is the kernel of Wang & Isola's uniformity (see the module docstring).
    """

    t: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t) and self.t > 0):
            raise ValueError(f"GaussianKernel wants a scale t > 0, got {self.t} (t = 0 is a constant kernel, t < 0 is not "
                             f"positive definite)")

    def __call__(self, cos: Tensor, dim: int) -> Tensor:
        """``φ(cos)``; ``dim`` is unused: one function serves every dimension."""
        return torch.exp(2 * self.t * (cos - 1))

    def value_and_slope(self, cos: Tensor, dim: int, *, slope: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(φ(cos), φ'(cos) = 2t·φ(cos))`` (or ``(φ, None)``), not differentiable: the Gram path's forward."""
        value = torch.sub(cos, 1).mul_(2 * self.t).exp_()
        return value, (2 * self.t * value if slope else None)


Kernel = GegenbauerKernel | GaussianKernel


def _gram_uniformity(u: Tensor, kernel: Kernel, block_size: int, gradient: Tensor | None) -> Tensor:
    """Ψ of the unit rows ``u`` (N, q), ``block_size`` rows of the kernel matrix at a time.

    With a ``gradient`` buffer (N, q), also writes dΨ/du into it.
    """
    num, dim = u.shape
    total = u.new_zeros(())
    for start in range(0, num, block_size):
        cos = u[start : start + block_size] @ u.T  # (b, N)
        value, slope = kernel.value_and_slope(cos, dim, slope=gradient is not None)
        total += value.sum()
        if slope is None:
            continue
        # dΨ/duᵢ = (2/N²) Σⱼ φ'(uᵢᵀuⱼ) uⱼ: φ'(G) is symmetric, so uᵢ's row and column of G count alike.
        torch.mm(slope, u, out=gradient[start : start + block_size])
    if gradient is not None:
        gradient.mul_(2 / num**2)
    return total / num**2


class _GramUniformity(torch.autograd.Function):
    """The Gram path with its gradient computed block by block in the forward pass.

    Autograd through ``φ(u @ uᵀ)`` costs three N²q products (the Gram matrix, then one for each of its
    two operands in the backward) and keeps every N × N intermediate; recomputing blocks under
    activation checkpointing would bound the memory but add a fourth product. Here: two products
    (``G_b = u_b uᵀ``, then ``φ'(G_b) u``) and O(block·N) memory beyond the (N, q) gradient.
    """

    @staticmethod
    def forward(ctx, u: Tensor, kernel: Kernel, block_size: int) -> Tensor:
        gradient = torch.empty_like(u)
        value = _gram_uniformity(u, kernel, block_size, gradient)
        ctx.save_for_backward(gradient)
        return value

    @staticmethod
    @once_differentiable  # the gradient is a constant of the forward: a second derivative would be wrong
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (gradient,) = ctx.saved_tensors
        return grad_output * gradient, None, None


def _third_moment_block(rows: Tensor, scale: float) -> Tensor:
    """``scale · Σᵢ uᵢ⊗uᵢ⊗uᵢ`` over the rows (b, q), flattened to (q², q)."""
    pairs = (rows.unsqueeze(-1) * rows.unsqueeze(-2)).flatten(1)  # (b, q²): rows uᵢ⊗uᵢ
    return pairs.T @ (rows * scale)


def _moment_uniformity(u: Tensor, kernel: GegenbauerKernel, block_size: int) -> Tensor:
    """Ψ of the unit rows ``u`` (N, q) from their mean, covariance and third moment."""
    num, dim = u.shape
    b1, b2, b3 = (kernel.weight(ell) for ell in (1, 2, 3))
    psi = u.new_zeros(())
    if b1 > 0 or b3 > 0:
        mean_square = u.mean(dim=0).square().sum()  # mean P₁ = ‖z̄‖²
        psi = psi + b1 * mean_square
    if b2 > 0:
        cov = (u.T @ u).div_(num)  # (q, q) C; in place: the product's backward does not need it
        # Subtract I/q on the diagonal rather than expand ‖C‖² − 2tr(C)/q + 1/q: for a near-uniform
        # batch ‖C‖² ≈ 1/q + 1/N, and the expansion would cancel away a factor N/q of the precision.
        cov.diagonal().sub_(1 / dim)
        psi = psi + b2 * dim / (dim - 1) * cov.square().sum()
    if b3 > 0:
        if num <= block_size:
            third = _third_moment_block(u, 1 / num)
        else:  # the (b, q²) Khatri–Rao rows of each block are recomputed in the backward, not kept
            third = sum(checkpoint(_third_moment_block, u[start : start + block_size], 1 / num, use_reentrant=False)
                        for start in range(0, num, block_size))
        psi = psi + b3 * ((dim + 2) * third.square().sum() - 3 * mean_square) / (dim - 1)
    return psi


def _moment_bytes(kernel: GegenbauerKernel, views: int, num: int, dim: int, element_size: int, block_size: int) -> int:
    """Rough peak bytes of the moment tensors: each, its gradient and a temporary (C: q², T: q³)."""
    elements = 0
    if kernel.weight(2) > 0:
        elements += 3 * dim**2
    if kernel.degree >= 3:
        elements += 3 * dim**3 + 2 * min(block_size, num) * dim**2
    return views * elements * element_size


def _element_size(dtype: torch.dtype) -> int:
    """Bytes per element of the dtype the loss computes in (float32 at least)."""
    return torch.finfo(torch.promote_types(dtype, torch.float32)).bits // 8


def _moment_obstacle(kernel: Kernel, views: int, num: int, dim: int, element_size: int, block_size: int,
                     max_moment_bytes: int) -> str | None:
    """Why the moment path cannot take this case, or None."""
    if isinstance(kernel, GaussianKernel):
        return "the Gaussian kernel's Gegenbauer expansion is infinite"
    if kernel.degree > MAX_MOMENT_DEGREE:
        return f"it covers degrees <= {MAX_MOMENT_DEGREE} and this kernel has b_{kernel.degree} > 0"
    needed = _moment_bytes(kernel, views, num, dim, element_size, block_size)
    if needed > max_moment_bytes:
        return (f"its moment tensors for q={dim} would take ~{needed / 2**30:.2f} GiB, over "
                f"max_moment_bytes={max_moment_bytes / 2**30:.2f} GiB (raise it if they fit)")
    return None


def _path_flops(kernel: GegenbauerKernel, num: int, dim: int, requires_grad: bool, block_size: int) -> tuple[int, int]:
    """Multiply-adds per view of the matrix products of (Gram path, moment path).

    The elementwise work (O(N²L) and O(Nq)) is left out. Gram: ``G = u uᵀ`` and, with a gradient,
    ``φ'(G) u``. Moments through autograd: the forward product and two in the backward, plus the
    recomputed forward of T's blocks when there are several.
    """
    gram = num**2 * dim * (2 if requires_grad else 1)
    moments = 0
    if kernel.weight(2) > 0:
        moments += num * dim**2 * (3 if requires_grad else 1)
    if kernel.degree >= 3:
        moments += num * dim**3 * ((3 + (num > block_size)) if requires_grad else 1)
    return gram, moments


def kernel_uniformity_path(shape: tuple[int, ...], kernel: Kernel, *, requires_grad: bool = True,
                           dtype: torch.dtype = torch.float32, block_size: int = 1024,
                           max_moment_bytes: int = DEFAULT_MAX_MOMENT_BYTES) -> str:
    """The path ``kernel_uniformity(path="auto")`` takes for embeddings of this shape: ``"gram"`` or ``"moments"``.

    The moment path if it can take the kernel (a Gegenbauer kernel of degree ≤ 3) within
    ``max_moment_bytes`` and costs fewer multiply-adds than the Gram path — with a gradient, Gram
    2·N²q against moments 3·Nq² (+ 3–4·Nq³ for degree 3), so degree 2 goes by moments when
    q < 2N/3, degree 3 only when q² ≲ N/2 — otherwise the Gram path, whose memory is bounded by blocks.

    Args:
        shape: (N, q) or (M, N, q).
        requires_grad: whether a gradient will be computed (it changes the costs).
        dtype: the embeddings' dtype (float32 at least is used).
    """
    views, num, dim = (1, *shape) if len(shape) == 2 else shape
    if _moment_obstacle(kernel, views, num, dim, _element_size(dtype), block_size, max_moment_bytes) is not None:
        return "gram"
    gram, moments = _path_flops(kernel, num, dim, requires_grad, block_size)
    return "moments" if moments < gram else "gram"


@float32_loss
def kernel_uniformity(embeddings: Tensor, kernel: Kernel, *, path: str = "auto", block_size: int = 1024,
                      max_moment_bytes: int = DEFAULT_MAX_MOMENT_BYTES) -> Tensor:
    """Kernel uniformity ``Ψ(Z) = (1/N²) Σ_{i,j} φ(ẑᵢᵀẑⱼ)`` of each view, averaged over the M views.

    Rows are L2-normalised; the sum includes i = j (see the module docstring). For a
    ``GegenbauerKernel`` Ψ is the MMD² between the batch and the uniform law on ``S^{q−1}``: 0 for
    a spherical design, ``Σ b_ℓ`` for a collapsed batch. SFRIK's regulariser with two views is
    ``kernel_uniformity(torch.stack([z1, z2]), SFRIK_KERNEL) = (Ψ(Z¹) + Ψ(Z²))/2``; gather the
    embeddings across processes before calling it.

    Paths (the same value up to rounding):

    - ``"gram"``: the N × N kernel matrix ``block_size`` rows at a time, its gradient computed with it
      in the forward (two N²q products, O(block_size·N) memory); any kernel. Not twice differentiable.
    - ``"moments"``: the closed forms in ‖z̄‖², ‖C − I/q‖² and ‖T‖² (O(Nq^L) time, O(q^L) memory);
      Gegenbauer kernels of degree ≤ 3 whose moment tensors fit in ``max_moment_bytes``.
    - ``"auto"``: the cheaper of the two in multiply-adds (``kernel_uniformity_path``).

    Args:
        embeddings: (N, q) or (M, N, q), N ≥ 1, q ≥ 2.
        kernel: a ``GegenbauerKernel`` (e.g. ``SFRIK_KERNEL``) or a ``GaussianKernel``.
        path: ``"auto"``, ``"gram"`` or ``"moments"``.
        block_size: rows per block (Gram: block_size × N kernel entries at a time; degree-3 moments:
            block_size × q² Khatri–Rao entries, recomputed in the backward when N > block_size).
        max_moment_bytes: the moment path's memory cap (its q² or q³ tensors, gradients included).

    Returns:
        A scalar, float32 at least (autocast is off inside: bf16 would swamp the O(1/N) differences).
    """
    if path not in PATHS:
        raise ValueError(f"path={path!r} is not one of {PATHS}")
    if not isinstance(kernel, (GegenbauerKernel, GaussianKernel)):
        raise ValueError(f"kernel must be a GegenbauerKernel or a GaussianKernel, got {type(kernel).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    z = embeddings.unsqueeze(0) if embeddings.ndim == 2 else embeddings
    if z.ndim != 3 or z.shape[0] < 1:
        raise ValueError(f"kernel_uniformity wants (N, q) or (M, N, q) embeddings with M >= 1 views, got shape {tuple(embeddings.shape)}")
    views, num, dim = z.shape
    if num < 1:
        raise ValueError(f"kernel_uniformity needs at least 1 embedding per view, got shape {tuple(embeddings.shape)}")
    if dim < 2:
        raise ValueError(f"kernel_uniformity needs embeddings of dimension q >= 2 (the sphere S^(q-1)), got q={dim}")
    requires_grad = torch.is_grad_enabled() and z.requires_grad
    if path == "moments":
        obstacle = _moment_obstacle(kernel, views, num, dim, _element_size(z.dtype), block_size, max_moment_bytes)
        if obstacle is not None:
            raise ValueError(f"the moment path cannot compute this: {obstacle}; use path='gram' or 'auto'")
    elif path == "auto":
        path = kernel_uniformity_path(z.shape, kernel, requires_grad=requires_grad, dtype=z.dtype, block_size=block_size,
                                      max_moment_bytes=max_moment_bytes)
    u = F.normalize(embeddings, dim=-1)
    # unbind, not u[m]: each u[m]'s backward would write into a zero tensor of the full (M, N, q) size
    u = [u] if u.ndim == 2 else u.unbind(0)  # M × (N, q)
    if path == "moments":
        per_view = [_moment_uniformity(view, kernel, block_size) for view in u]
    elif requires_grad:
        per_view = [_GramUniformity.apply(view, kernel, block_size) for view in u]
    else:
        per_view = [_gram_uniformity(view, kernel, block_size, None) for view in u]
    return per_view[0] if views == 1 else torch.stack(per_view).mean()
