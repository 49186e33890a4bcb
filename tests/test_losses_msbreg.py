"""MSBReg's losses against independent float64 computations, and the properties they are for."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nocollapse.eval.geometry import rankme
from nocollapse.losses.msbreg import brownian_diffusive_loss, multiview_centroid_loss, singular_value_loss


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("views", [2, 4])
@pytest.mark.parametrize("variant", ["per_view", "mean"])
def test_centroid_loss_matches_a_float64_loop(views, variant):
    rng = np.random.default_rng(views)
    p, z = rng.normal(size=(2, views, 6, 5))
    total = 0.0
    for n in range(6):
        centroid = sum(unit_rows(z[m, n]) for m in range(views)) / views
        if variant == "mean":
            total += np.sum((sum(unit_rows(p[m, n]) for m in range(views)) / views - centroid) ** 2)
        else:
            total += sum(np.sum((unit_rows(p[m, n]) - centroid) ** 2) for m in range(views)) / views
    value = multiview_centroid_loss(torch.tensor(p), torch.tensor(z), variant=variant)
    assert value.item() == pytest.approx(total / 6, rel=1e-12)


def test_centroid_loss_is_zero_when_all_views_coincide_and_stops_the_target_gradient():
    one = torch.randn(1, 8, 16)
    assert multiview_centroid_loss(one.expand(3, -1, -1), 2.5 * one.expand(3, -1, -1)).item() == pytest.approx(0, abs=1e-6)
    predictions = torch.randn(3, 8, 16, requires_grad=True)
    targets = torch.randn(3, 8, 16, requires_grad=True)
    multiview_centroid_loss(predictions, targets).backward()
    assert targets.grad is None and predictions.grad.abs().sum() > 0


def test_centroid_loss_gradcheck():
    predictions = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(3, 4, 5, dtype=torch.float64)
    for variant in ("per_view", "mean"):
        assert torch.autograd.gradcheck(lambda p: multiview_centroid_loss(p, targets, variant=variant), (predictions,))


def sv_reference(x: np.ndarray, target: str = "mean") -> float:
    """Σ_k (λ_k − level)² over the d eigenvalues of the covariance of the centred unit rows."""
    z = unit_rows(x)
    z = z - z.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(z.T @ z / (len(z) - 1))
    level = eigenvalues.mean() if target == "mean" else 1 / x.shape[1]
    return float(np.sum((eigenvalues - level) ** 2))


@pytest.mark.parametrize("shape", [(64, 8), (10, 32)])
@pytest.mark.parametrize("form", ["auto", "covariance", "gram"])
@pytest.mark.parametrize("target", ["mean", "uniform"])
def test_singular_value_loss_matches_the_eigenvalues_in_both_regimes(shape, form, target):
    x = np.random.default_rng(1).normal(size=shape) @ np.diag(np.linspace(0.2, 3, shape[1]))
    value = singular_value_loss(torch.tensor(x), form=form, target=target)
    assert value.item() == pytest.approx(sv_reference(x, target), rel=1e-9)


def test_singular_value_loss_averages_views_each_centred_on_its_own():
    x = np.random.default_rng(2).normal(size=(3, 20, 6)) + np.arange(3)[:, None, None]
    for target in ("mean", "uniform"):
        expected = np.mean([sv_reference(v, target) for v in x])
        assert singular_value_loss(torch.tensor(x), target=target).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
@pytest.mark.parametrize("target", ["mean", "uniform"])
def test_singular_value_forms_agree_in_value_and_gradient(shape, target):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    covariance, = torch.autograd.grad(singular_value_loss(x, form="covariance", target=target), x)
    gram, = torch.autograd.grad(singular_value_loss(x, form="gram", target=target), x)
    assert singular_value_loss(x, form="gram", target=target).item() == pytest.approx(singular_value_loss(x, form="covariance", target=target).item(), rel=1e-10)
    torch.testing.assert_close(gram, covariance, rtol=1e-8, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: singular_value_loss(v, form="gram", target=target), (x,))
    assert torch.autograd.gradcheck(lambda v: singular_value_loss(v, form="covariance", target=target), (x,))


def spread_over(rank: int, dim: int = 16, num: int = 64) -> torch.Tensor:
    """``num`` rows ±e_k cycling over the first ``rank`` axes: centred, isotropic within those axes."""
    rows = [sign * F.one_hot(torch.tensor(k), dim).double() for k in range(rank) for sign in (1, -1)]
    return torch.stack([rows[i % len(rows)] for i in range(num)])


def test_singular_value_loss_is_zero_for_an_isotropic_batch_and_grows_as_it_collapses():
    dim, num = 16, 64
    values = [singular_value_loss(spread_over(rank, dim, num), target="mean").item() for rank in (16, 8, 4, 2, 1)]
    assert values[0] == pytest.approx(0, abs=1e-12)
    uniform = [singular_value_loss(spread_over(rank, dim, num), target="uniform").item() for rank in (16, 8, 4, 2, 1)]
    # isotropic unit rows with mean 0 have λ_k = N/((N−1)d): off 1/d only through the N−1 normalisation
    assert uniform[0] == pytest.approx(1 / (dim * (num - 1) ** 2), rel=1e-6) and all(a < b for a, b in zip(uniform, uniform[1:])), uniform
    assert all(a < b for a, b in zip(values, values[1:])), values
    trace = num / (num - 1)  # unit rows with mean 0: tr C = N/(N−1)
    for rank, value in zip((8, 4, 2), values[1:]):  # rank axes each carry trace/rank: Σ(λ−λ̄)² = trace²(1/rank − 1/d)
        assert value == pytest.approx(trace**2 * (1 / rank - 1 / dim), rel=1e-9)


def test_only_the_uniform_target_resists_a_collapse_to_one_point():
    dim = 16
    point = torch.randn(1, dim).expand(32, -1) + 1e-4 * torch.randn(32, dim)
    assert singular_value_loss(point, target="mean").item() < 1e-12  # it scales with the squared spread
    assert singular_value_loss(point, target="uniform").item() == pytest.approx(1 / dim, rel=1e-3)
    spread = singular_value_loss(spread_over(dim, dim, 64).float(), target="uniform").item()
    assert spread < 1e-3 * (1 / dim)  # isotropic unit rows: λ_k = N/((N−1)d), off 1/d only by the N−1


def test_uniform_target_descent_spreads_a_batch_gathered_near_one_point():
    torch.manual_seed(0)
    points = (torch.randn(1, 16) + 0.05 * torch.randn(64, 16) @ torch.diag(torch.logspace(0, -3, 16))).requires_grad_(True)
    centred_rank = lambda: rankme(F.normalize(points.detach(), dim=-1) - F.normalize(points.detach(), dim=-1).mean(0))
    start = centred_rank()
    optimizer = torch.optim.Adam([points], lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        singular_value_loss(points, target="uniform").backward()
        optimizer.step()
    final = singular_value_loss(points, target="uniform").item()
    assert start < 7 and centred_rank() > 14 and final < 1e-3, (start, centred_rank(), final)


def test_singular_value_loss_under_bf16_autocast_gives_the_float32_value():
    x = torch.randn(32, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = singular_value_loss(x.to(torch.bfloat16))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(singular_value_loss(x.to(torch.bfloat16).float()).item(), rel=1e-6)


def test_brownian_gradient_is_the_projected_noise_of_each_sample_alone():
    sigma, num, dim = 0.5, 6, 4
    z = torch.randn(num, dim, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(brownian_diffusive_loss(z, sigma=sigma, generator=torch.Generator().manual_seed(3)), z)
    noise = sigma * torch.randn(num, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    unit = F.normalize(z.detach(), dim=-1)
    # d/dz of −⟨z/‖z‖, η⟩/n is −(I − ẑẑᵀ)η/(n‖z‖): only sample i's own embedding and noise enter.
    expected = -(noise - (unit * noise).sum(-1, keepdim=True) * unit) / (num * z.detach().norm(dim=-1, keepdim=True))
    torch.testing.assert_close(grad, expected)
    moved = z.detach().clone()
    moved[1:] = torch.randn(num - 1, dim, dtype=torch.float64)
    moved.requires_grad_(True)
    grad_moved, = torch.autograd.grad(brownian_diffusive_loss(moved, sigma=sigma, generator=torch.Generator().manual_seed(3)), moved)
    torch.testing.assert_close(grad_moved[0], grad[0], rtol=0, atol=0)


def test_brownian_kicks_have_the_configured_scale_and_are_fresh_each_call():
    num, dim = 20000, 8
    z = F.normalize(torch.randn(num, dim), dim=-1).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    for sigma in (0.1, 2.0):
        grad, = torch.autograd.grad(brownian_diffusive_loss(z, sigma=sigma, generator=generator), z)
        # On the unit sphere the kick is the tangent part of −η/n: per-coordinate std σ·sqrt((d−1)/d).
        assert (num * grad).std().item() == pytest.approx(sigma * ((dim - 1) / dim) ** 0.5, rel=0.02)
    first = brownian_diffusive_loss(z, generator=generator)
    assert first.item() != brownian_diffusive_loss(z, generator=generator).item()


def test_losses_reject_bad_shapes_and_settings():
    with pytest.raises(ValueError, match="M >= 2"):
        multiview_centroid_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="variant"):
        multiview_centroid_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 3), variant="median")
    with pytest.raises(ValueError, match="at least 2"):
        singular_value_loss(torch.randn(1, 3))
    with pytest.raises(ValueError, match="target"):
        singular_value_loss(torch.randn(4, 3), target="median")
    with pytest.raises(ValueError, match="form"):
        singular_value_loss(torch.randn(4, 3), form="eig")
    with pytest.raises(ValueError, match="sigma"):
        brownian_diffusive_loss(torch.randn(4, 3), sigma=-1)
