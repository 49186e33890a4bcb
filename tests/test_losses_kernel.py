"""Kernel uniformity (SPEC §4): Gegenbauer polynomials against exact sums; the Gram and moment paths
against each other and the closed forms; the MMD's extremes; gradients; Wang & Isola's uniformity."""

import math
from fractions import Fraction

import pytest
import torch

from nocollapse.losses import uniformity_loss
from nocollapse.losses.kernels import (
    SFRIK_KERNEL, GaussianKernel, GegenbauerKernel, gegenbauer, gegenbauer_all, kernel_uniformity, kernel_uniformity_path,
)

DEGREE_2 = GegenbauerKernel((0.0, 1.0))


def rising(x, k):
    """Pochhammer symbol (x)_k = x(x+1)…(x+k−1), exactly."""
    return math.prod((x + j for j in range(k)), start=Fraction(1))


def gegenbauer_reference(t: float, degree: int, dim: int) -> float:
    """``C_n^λ(t)/C_n^λ(1)``, λ = (q−2)/2, from the explicit sum, in exact rational arithmetic:
    ``C_n^λ(t) = Σ_k (−1)^k Γ(n−k+λ)/(Γ(λ) k! (n−2k)!) (2t)^{n−2k}`` with ``Γ(n−k+λ)/Γ(λ) = (λ)_{n−k}``,
    and ``C_n^λ(1) = Γ(n+2λ)/(Γ(2λ) n!) = (2λ)_n/n!``. (λ > 0: q ≥ 3.)"""
    lam, t = Fraction(dim - 2, 2), Fraction(t)
    value = sum((-1) ** k * rising(lam, degree - k) / (math.factorial(k) * math.factorial(degree - 2 * k)) * (2 * t) ** (degree - 2 * k)
                for k in range(degree // 2 + 1))
    return float(value / (rising(2 * lam, degree) / math.factorial(degree)))


def cosines(dim):
    """Points of [−1, 1], including the ends and the typical cosine ~1/√q of random pairs."""
    points = [-1.0, -0.999, -0.5, -3 / math.sqrt(dim), -1 / math.sqrt(dim), 0.0, 1e-3, 1 / math.sqrt(dim), 0.3, 0.9, 0.99999, 1.0]
    return torch.tensor([x for x in points if abs(x) <= 1], dtype=torch.float64)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def psi_reference(z, kernel):
    """(1/N²) Σ_{i,j} φ(ẑᵢᵀẑⱼ) per view, then the mean over views, from the whole Gram matrix."""
    u = unit(z.double().reshape(-1, *z.shape[-2:]))
    return torch.stack([kernel(view @ view.T, z.shape[-1]).mean() for view in u]).mean()


@pytest.mark.parametrize("dim", [3, 10, 128, 32768])
def test_gegenbauer_equals_the_explicit_sum(dim):
    t = cosines(dim)
    polys64, polys32 = gegenbauer_all(t, 8, dim), gegenbauer_all(t.float(), 8, dim)
    for degree in range(9):
        expected = torch.tensor([gegenbauer_reference(float(x), degree, dim) for x in t], dtype=torch.float64)
        torch.testing.assert_close(polys64[degree], expected, rtol=0, atol=1e-13)
        torch.testing.assert_close(polys32[degree].double(), expected, rtol=0, atol=1e-6)  # float32: stable at every q
        torch.testing.assert_close(gegenbauer(t, degree, dim), polys64[degree], rtol=0, atol=0)


@pytest.mark.parametrize("dim", [2, 3, 7, 32768])
def test_low_degrees_are_the_spec_formulas(dim):
    t = cosines(dim)
    p0, p1, p2, p3 = gegenbauer_all(t, 3, dim)
    assert torch.equal(p0, torch.ones_like(t)) and torch.equal(p1, t)
    torch.testing.assert_close(p2, (dim * t**2 - 1) / (dim - 1), rtol=0, atol=1e-14)
    torch.testing.assert_close(p3, ((dim + 2) * t**3 - 3 * t) / (dim - 1), rtol=0, atol=1e-14)


def test_dimension_2_is_chebyshev_and_dimension_3_is_legendre():
    t = cosines(3)
    for degree, (chebyshev, legendre) in enumerate(zip(gegenbauer_all(t, 8, 2), gegenbauer_all(t, 8, 3))):
        torch.testing.assert_close(chebyshev, torch.cos(degree * torch.arccos(t)), rtol=0, atol=1e-12)
        # P_n(t) = 2^−n Σ_k (−1)^k C(n,k) C(2n−2k, n) t^(n−2k)
        coefficients = [(-1) ** k * math.comb(degree, k) * math.comb(2 * degree - 2 * k, degree) / 2**degree for k in range(degree // 2 + 1)]
        expected = sum(c * t ** (degree - 2 * k) for k, c in enumerate(coefficients))
        torch.testing.assert_close(legendre, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dim", [3, 10, 128])
def test_each_degree_averages_to_zero_over_the_sphere(dim):
    """E_U P_ℓ(uᵀv) = 0 (ℓ ≥ 1) and E_U P_ℓ² = 1/dim H_ℓ (addition theorem), by Monte Carlo.

    The squares are checked up to ℓ = 4: beyond, in high dimension, they are too heavy-tailed for
    the sample standard deviation of 20000 draws to bound their error."""
    samples = 20000
    points = unit(torch.randn(samples, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim)))
    polys = gegenbauer_all(points[:, 0], 8, dim)  # cosines with the pole e₁; any pole, by symmetry
    for degree, p in enumerate(polys[1:], start=1):
        assert abs(p.mean().item()) < 5 * p.std().item() / math.sqrt(samples)
        if degree > 4:
            continue
        harmonics = math.comb(degree + dim - 1, dim - 1) - math.comb(degree + dim - 3, dim - 1)
        square = p.square()
        assert abs(square.mean().item() - 1 / harmonics) < 5 * square.std().item() / math.sqrt(samples)


def test_value_and_slope_are_the_kernel_and_its_derivative():
    cos = torch.linspace(-1, 1, 101, dtype=torch.float64, requires_grad=True)
    cases = [(SFRIK_KERNEL, 2), (SFRIK_KERNEL, 3), (SFRIK_KERNEL, 32768), (GegenbauerKernel([0, 0, 0, 0, 1, 2, 0, 3]), 10),
             (GegenbauerKernel([2]), 5), (GegenbauerKernel([0, 0]), 5), (GaussianKernel(2.0), 5), (GaussianKernel(0.3), 5)]
    for kernel, dim in cases:
        value = kernel(cos, dim)
        (slope,) = torch.autograd.grad(value.sum(), cos)
        fast_value, fast_slope = kernel.value_and_slope(cos.detach(), dim)
        torch.testing.assert_close(fast_value, value.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast_slope, slope, rtol=1e-12, atol=1e-11)
    assert SFRIK_KERNEL.value_and_slope(cos.detach(), 8, slope=False)[1] is None


@pytest.mark.parametrize("n, dim", [(40, 6), (6, 40)])
def test_moment_closed_forms(n, dim):
    """mean P₁ = ‖z̄‖², mean P₂ = q/(q−1)·‖C − I/q‖², mean P₃ = ((q+2)‖T‖² − 3‖z̄‖²)/(q−1), on both paths."""
    u = unit(torch.randn(n, dim, dtype=torch.float64))
    mean = u.mean(dim=0)
    cov = u.T @ u / n
    third = torch.einsum("ni,nj,nk->ijk", u, u, u) / n
    expected = {
        GegenbauerKernel([1]): mean.square().sum(),
        GegenbauerKernel([0, 1]): dim / (dim - 1) * (cov - torch.eye(dim, dtype=torch.float64) / dim).square().sum(),
        GegenbauerKernel([0, 0, 1]): ((dim + 2) * third.square().sum() - 3 * mean.square().sum()) / (dim - 1),
    }
    for kernel, value in expected.items():
        for path in ("gram", "moments"):
            assert kernel_uniformity(u, kernel, path=path).item() == pytest.approx(value.item(), rel=1e-12)


KERNELS = [GegenbauerKernel([1]), DEGREE_2, GegenbauerKernel([0, 0, 1]), SFRIK_KERNEL, GegenbauerKernel([0.5, 0, 2])]


@pytest.mark.parametrize("shape", [(2, 40, 6), (2, 6, 40), (40, 5)], ids=["q<N", "q>N", "one-view"])
@pytest.mark.parametrize("kernel", KERNELS, ids=[str(k.weights) for k in KERNELS])
def test_gram_and_moment_paths_equal_the_definition(shape, kernel):
    z = torch.randn(shape, dtype=torch.float64)
    expected = psi_reference(z, kernel).item()
    for path in ("gram", "moments"):
        for block_size in (16, 1024):  # several blocks and one
            assert kernel_uniformity(z, kernel, path=path, block_size=block_size).item() == pytest.approx(expected, rel=1e-11)


def test_float32_paths_agree_with_float64():
    z = torch.randn(2, 200, 24)
    expected = psi_reference(z, SFRIK_KERNEL).item()
    for path in ("gram", "moments"):
        assert kernel_uniformity(z, SFRIK_KERNEL, path=path, block_size=128).item() == pytest.approx(expected, rel=1e-5)
    wide = torch.randn(16, 32768)
    assert kernel_uniformity(wide, SFRIK_KERNEL).item() == pytest.approx(psi_reference(wide, SFRIK_KERNEL).item(), rel=1e-5)


def test_views_are_averaged_and_one_point_scores_phi_of_1():
    z = torch.randn(3, 20, 6)
    for path in ("gram", "moments"):
        per_view = [kernel_uniformity(view, SFRIK_KERNEL, path=path).item() for view in z]
        assert kernel_uniformity(z, SFRIK_KERNEL, path=path).item() == pytest.approx(sum(per_view) / 3, rel=1e-6)
        assert kernel_uniformity(torch.randn(1, 6), SFRIK_KERNEL, path=path).item() == pytest.approx(81.0, rel=1e-6)


def test_spread_batches_score_lower_than_clustered_ones():
    generator = torch.Generator().manual_seed(0)
    centre = torch.randn(1, 16, generator=generator)
    noise = torch.randn(128, 16, generator=generator)
    for kernel in (SFRIK_KERNEL, DEGREE_2, GaussianKernel()):
        values = [kernel_uniformity(centre + scale * noise, kernel).item() for scale in (0.01, 0.1, 1.0, 10.0)]
        assert values == sorted(values, reverse=True)
    sfrik = [kernel_uniformity(centre + scale * noise, SFRIK_KERNEL).item() for scale in (0.01, 10.0)]
    assert sfrik[0] > 80 and sfrik[1] < 2 * 81 / 128  # uniform points: E Ψ = φ(1)/N from the diagonal alone


def test_a_collapse_scores_the_maximum_and_a_spherical_design_zero():
    collapsed = torch.randn(1, 12).repeat(64, 1) * (torch.rand(64, 1) + 0.1)  # one direction, any length
    cross_polytope = torch.cat([torch.eye(12), -torch.eye(12)]) * 3  # ±eₖ: a spherical 3-design
    random = torch.randn(2, 30, 12)
    for path in ("gram", "moments"):
        assert kernel_uniformity(collapsed, SFRIK_KERNEL, path=path).item() == pytest.approx(81.0, rel=1e-5)
        assert kernel_uniformity(cross_polytope, SFRIK_KERNEL, path=path).item() == pytest.approx(0.0, abs=1e-5)
        assert kernel_uniformity(random, SFRIK_KERNEL, path=path).item() > 0  # Ψ is an MMD²
    assert kernel_uniformity(collapsed, GaussianKernel()).item() == pytest.approx(1.0, rel=1e-6)


def test_the_gaussian_kernel_is_wang_and_isolas_uniformity():
    """With the diagonal, Ψ = (1 + (N−1)·exp(U))/N for U = log mean_{i≠j} exp(−t‖ẑᵢ − ẑⱼ‖²): monotone in U."""
    generator = torch.Generator().manual_seed(0)
    batch = 20
    for t in (0.5, 2.0):
        for scale in (0.1, 1.0):
            z = torch.randn(batch, 8, dtype=torch.float64, generator=generator) * scale + 1
            uniformity = uniformity_loss(z, t=t).item()
            expected = (1 + (batch - 1) * math.exp(uniformity)) / batch
            assert kernel_uniformity(z, GaussianKernel(t)).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("path", ["gram", "moments"])
@pytest.mark.parametrize("block_size", [4, 1024])
def test_gradients_check_in_float64(path, block_size):
    z = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kernel_uniformity(x, SFRIK_KERNEL, path=path, block_size=block_size), (z,))
    if path == "gram":
        assert torch.autograd.gradcheck(lambda x: kernel_uniformity(x, GaussianKernel(1.5), block_size=block_size), (z,))


def test_gram_blocks_and_the_autograd_definition_give_the_same_gradient():
    z = torch.randn(50, 9, dtype=torch.float64, requires_grad=True)
    for kernel in (SFRIK_KERNEL, GaussianKernel()):
        (expected,) = torch.autograd.grad(psi_reference(z, kernel), z)
        for block_size in (7, 1024):
            (gradient,) = torch.autograd.grad(kernel_uniformity(z, kernel, path="gram", block_size=block_size), z)
            torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-13)
    with torch.no_grad():  # without a gradient to compute, the value is the same
        assert kernel_uniformity(z, SFRIK_KERNEL, path="gram").item() == pytest.approx(psi_reference(z, SFRIK_KERNEL).item(), rel=1e-12)


def test_bf16_and_autocast_are_computed_in_float32():
    z = torch.randn(2, 64, 16)
    for path in ("gram", "moments"):
        expected = kernel_uniformity(z, SFRIK_KERNEL, path=path)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = kernel_uniformity(z, SFRIK_KERNEL, path=path)
        assert value.dtype == torch.float32 and value.item() == pytest.approx(expected.item(), rel=1e-5)
        low = z.bfloat16()
        assert kernel_uniformity(low, SFRIK_KERNEL, path=path).item() == pytest.approx(kernel_uniformity(low.float(), SFRIK_KERNEL, path=path).item(), rel=1e-6)


def test_auto_takes_the_cheaper_path_that_fits():
    assert kernel_uniformity_path((4096, 256), DEGREE_2) == "moments"
    assert kernel_uniformity_path((256, 4096), DEGREE_2) == "gram"
    # with a gradient the moment path costs 3Nq² against the Gram path's 2N²q; without, Nq² against N²q
    assert kernel_uniformity_path((1000, 800), DEGREE_2) == "gram"
    assert kernel_uniformity_path((1000, 800), DEGREE_2, requires_grad=False) == "moments"
    assert kernel_uniformity_path((2, 2048, 32768), SFRIK_KERNEL) == "gram"
    assert kernel_uniformity_path((4096, 256), SFRIK_KERNEL) == "gram"  # degree 3 costs Nq³
    assert kernel_uniformity_path((65536, 32), SFRIK_KERNEL) == "moments"
    assert kernel_uniformity_path((65536, 16384), DEGREE_2) == "gram"  # cheaper by moments, but C would take 3 GiB
    assert kernel_uniformity_path((65536, 16384), DEGREE_2, max_moment_bytes=4 * 2**30) == "moments"
    assert kernel_uniformity_path((10**6, 8), GaussianKernel()) == "gram"
    assert kernel_uniformity_path((10**6, 8), GegenbauerKernel([0, 0, 0, 1])) == "gram"  # degree 4 has no moment path


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="not positive definite"):
        GegenbauerKernel((1.0, -1.0))
    with pytest.raises(ValueError, match="finite"):
        GegenbauerKernel((math.nan,))
    with pytest.raises(ValueError, match="at least one weight"):
        GegenbauerKernel(())
    with pytest.raises(ValueError, match="t > 0"):
        GaussianKernel(0.0)
    with pytest.raises(ValueError, match="degree must be >= 0"):
        gegenbauer(torch.zeros(3), -1, 3)
    with pytest.raises(ValueError, match="q >= 2"):
        gegenbauer(torch.zeros(3), 2, 1)
    z = torch.randn(8, 4)
    for shape in [(4,), (2, 2, 8, 4), (0, 8, 4)]:
        with pytest.raises(ValueError, match=r"\(N, q\) or \(M, N, q\)"):
            kernel_uniformity(torch.randn(shape), SFRIK_KERNEL)
    with pytest.raises(ValueError, match="at least 1 embedding"):
        kernel_uniformity(torch.randn(0, 4), SFRIK_KERNEL)
    with pytest.raises(ValueError, match="q >= 2"):
        kernel_uniformity(torch.randn(8, 1), SFRIK_KERNEL)
    with pytest.raises(ValueError, match="not one of"):
        kernel_uniformity(z, SFRIK_KERNEL, path="fast")
    with pytest.raises(ValueError, match="GegenbauerKernel or a GaussianKernel"):
        kernel_uniformity(z, (1.0, 40.0, 40.0))
    with pytest.raises(ValueError, match="block_size"):
        kernel_uniformity(z, SFRIK_KERNEL, block_size=0)
    with pytest.raises(ValueError, match="Gaussian kernel's Gegenbauer expansion is infinite"):
        kernel_uniformity(z, GaussianKernel(), path="moments")
    with pytest.raises(ValueError, match="degrees <= 3"):
        kernel_uniformity(z, GegenbauerKernel([0, 0, 0, 1]), path="moments")
    with pytest.raises(ValueError, match="max_moment_bytes"):
        kernel_uniformity(z, SFRIK_KERNEL, path="moments", max_moment_bytes=1000)
