"""Alignment, uniformity and InfoNCE against float64 loops; the limits the papers state; gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from nocollapse.losses import alignment_loss, info_nce_loss, uniformity_loss


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def uniformity_reference(z, t):
    """Per-view mean over i<j pairs (Wang & Isola's pdist form), then the mean over views."""
    values = []
    for view in unit(z.double()):
        kernel = [math.exp(-t * float((view[i] - view[j]).square().sum())) for i in range(len(view)) for j in range(i + 1, len(view))]
        values.append(math.log(sum(kernel) / len(kernel)))
    return sum(values) / len(values)


def info_nce_reference(z, temperature):
    """ℓ(i, p) for every anchor i and positive p, by explicit sums."""
    u = unit(z.double())
    views, batch, _ = u.shape
    rows = [(m, b) for m in range(views) for b in range(batch)]
    losses = []
    for m, b in rows:
        anchor = u[m, b]
        denominator = sum(math.exp(float(anchor @ u[k, c]) / temperature) for k, c in rows if (k, c) != (m, b))
        for k in range(views):
            if k != m:
                losses.append(-math.log(math.exp(float(anchor @ u[k, b]) / temperature) / denominator))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_uniformity_equals_the_pairwise_definition(views):
    z = torch.randn(views, 7, 5)
    assert uniformity_loss(z, t=2).item() == pytest.approx(uniformity_reference(z, 2), rel=1e-5)
    assert uniformity_loss(z, t=0.5).item() == pytest.approx(uniformity_reference(z, 0.5), rel=1e-5)


def test_uniformity_takes_one_view_as_a_matrix():
    z = torch.randn(9, 4)
    assert uniformity_loss(z).item() == pytest.approx(uniformity_loss(z[None]).item())


def test_uniformity_is_about_minus_2t_for_many_uniform_points_in_high_dimension_and_0_when_collapsed():
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(2048, 512, generator=generator)  # a Gaussian direction is uniform on the sphere
    assert uniformity_loss(spread, t=2).item() == pytest.approx(-4.0, abs=0.05)
    collapsed = torch.randn(1, 64).repeat(256, 1) * torch.rand(256, 1)  # one direction, any length
    assert uniformity_loss(collapsed, t=2).item() == pytest.approx(0.0, abs=1e-6)


def test_uniformity_falls_as_a_cluster_spreads():
    generator = torch.Generator().manual_seed(1)
    centre = torch.randn(1, 16, generator=generator)
    noise = torch.randn(128, 16, generator=generator)
    values = [uniformity_loss(centre + scale * noise).item() for scale in (0.01, 0.1, 1.0, 10.0)]
    assert values == sorted(values, reverse=True) and values[0] > -0.01 and values[-1] < -2.5


def test_alignment_equals_the_mean_distance_over_view_pairs():
    z = torch.randn(3, 6, 5, dtype=torch.float64)
    u = unit(z)
    pairs = [(0, 1), (0, 2), (1, 2)]
    for alpha in (2.0, 1.0):
        expected = sum(float((u[a, b] - u[c, b]).norm() ** alpha) for a, c in pairs for b in range(6)) / (3 * 6)
        assert alignment_loss(z, alpha=alpha).item() == pytest.approx(expected, rel=1e-10)
    assert alignment_loss(z[:2]).item() == pytest.approx((2 - 2 * (u[0] * u[1]).sum(-1)).mean().item(), rel=1e-10)
    assert alignment_loss(torch.stack([z[0], 5 * z[0]])).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("views", [2, 3])
def test_info_nce_equals_the_definition(views):
    z = torch.randn(views, 5, 4)
    for temperature in (0.1, 0.5):
        assert info_nce_loss(z, temperature=temperature).item() == pytest.approx(info_nce_reference(z, temperature), rel=1e-5)


def test_info_nce_with_two_views_is_simclr_nt_xent():
    """SimCLR's form: cross-entropy over the 2B−1 others, the label being the other view of the image."""
    z = torch.randn(2, 16, 8, dtype=torch.float64)
    u = F.normalize(z.reshape(32, 8), dim=1)
    logits = (u @ u.T / 0.3).fill_diagonal_(-math.inf)
    labels = (torch.arange(32) + 16) % 32
    assert info_nce_loss(z, temperature=0.3).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-12)


def test_info_nce_is_low_when_positives_match_and_negatives_are_spread():
    distinct = torch.eye(8)  # 8 orthogonal images
    matched = torch.stack([distinct, distinct])
    shuffled = torch.stack([distinct, distinct[torch.roll(torch.arange(8), 1)]])
    assert info_nce_loss(matched, temperature=0.1) < 0.01 < 5 < info_nce_loss(shuffled, temperature=0.1)


def test_gradients_check_in_float64():
    z = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: uniformity_loss(x, t=2), (z,))
    assert torch.autograd.gradcheck(lambda x: alignment_loss(x), (z,))
    assert torch.autograd.gradcheck(lambda x: info_nce_loss(x, temperature=0.2), (z,))


def test_bf16_inputs_are_computed_in_float32():
    z = torch.randn(2, 32, 16)
    low = z.bfloat16()
    assert info_nce_loss(low).dtype == torch.float32
    assert uniformity_loss(low).item() == pytest.approx(uniformity_loss(low.float()).item(), rel=1e-6)


def test_bad_shapes_say_what_is_wanted():
    with pytest.raises(ValueError, match="M >= 2 views"):
        info_nce_loss(torch.randn(8, 4))
    with pytest.raises(ValueError, match="M >= 2 views"):
        alignment_loss(torch.randn(1, 8, 4))
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        uniformity_loss(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match=r"\(B, d\) or \(M, B, d\)"):
        uniformity_loss(torch.randn(4))
