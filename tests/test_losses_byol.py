"""BYOL loss against an independent float64 computation, its gradient, and its symmetry."""

import itertools
import math

import pytest
import torch

from nocollapse.losses import byol_loss, normalized_mse


def reference_pair_loss(p: torch.Tensor, z: torch.Tensor) -> float:
    """Mean over rows of ‖p/‖p‖ − z/‖z‖‖², with explicit loops in float64."""
    total = 0.0
    for row_p, row_z in zip(p.double().tolist(), z.double().tolist()):
        norm_p = math.sqrt(sum(v * v for v in row_p))
        norm_z = math.sqrt(sum(v * v for v in row_z))
        total += sum((a / norm_p - b / norm_z) ** 2 for a, b in zip(row_p, row_z))
    return total / len(p)


def test_normalized_mse_matches_reference():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert normalized_mse(p, z).item() == pytest.approx(reference_pair_loss(p, z), rel=1e-5)


def test_two_view_loss_is_the_papers_symmetric_sum():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(2, 9, 6, generator=g), torch.randn(2, 9, 6, generator=g)
    expected = reference_pair_loss(p[0], z[1]) + reference_pair_loss(p[1], z[0])
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-5)


def test_many_views_average_ordered_pairs():
    g = torch.Generator().manual_seed(2)
    p, z = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, 3, generator=g)
    pairs = [(i, j) for i, j in itertools.permutations(range(4), 2)]
    expected = 2 * sum(reference_pair_loss(p[i], z[j]) for i, j in pairs) / len(pairs)
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_symmetric_in_the_views():
    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    assert byol_loss(p, z).item() == pytest.approx(byol_loss(p.flip(0), z.flip(0)).item(), rel=1e-6)


def test_gradient_matches_finite_differences_and_is_scale_invariant():
    g = torch.Generator().manual_seed(4)
    p = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: byol_loss(x, z), (p,))
    (grad,) = torch.autograd.grad(byol_loss(p, z), p)
    # Normalisation makes the loss blind to the predictions' length: the gradient is orthogonal to p.
    radial = (grad * p.detach()).sum(dim=-1)
    assert radial.abs().max().item() < 1e-5


def test_identical_directions_give_zero_and_opposite_give_the_maximum():
    p = torch.randn(2, 4, 8)
    assert byol_loss(p, 3 * p.flip(0)).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p.flip(0)).item() == pytest.approx(8.0, abs=1e-5)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="M >= 2"):
        byol_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3))
    with pytest.raises(ValueError):
        byol_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 5))
