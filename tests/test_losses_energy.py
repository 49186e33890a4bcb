"""Hyperspherical energy against a float64 pair loop; spread beats clustered; its gradient repels."""

import itertools
import math

import pytest
import torch

from nocollapse.losses.energy import hyperspherical_energy


def energy_reference(weight, power, distance, half_space):
    neurons = [row / row.norm() for row in weight.double().flatten(1)]
    if half_space:
        neurons += [-row for row in neurons]
    energies = []
    for a, b in itertools.combinations(neurons, 2):
        cos = float(a @ b)
        squared = 2 - 2 * cos if distance == "euclidean" else (math.acos(max(-1 + 1e-6, min(1 - 1e-6, cos))) / math.pi) ** 2
        squared = max(squared, 1e-6)
        energies.append(-math.log(squared) if power == 0 else squared ** (-power / 2))
    return sum(energies) / len(energies)


@pytest.mark.parametrize("power, distance, half_space", list(itertools.product((0, 1, 2), ("euclidean", "angular"), (False, True))))
def test_energy_equals_the_pairwise_definition(power, distance, half_space):
    weight = torch.randn(6, 3, 2, 2)  # a conv layer: 6 neurons of fan-in 12
    value = hyperspherical_energy(weight, power=power, distance=distance, half_space=half_space)
    assert value.item() == pytest.approx(energy_reference(weight, power, distance, half_space), rel=1e-5)


def test_blocks_give_the_same_value_and_gradient():
    weight = torch.randn(50, 7, dtype=torch.float64, requires_grad=True)
    whole = hyperspherical_energy(weight, power=1, half_space=True)
    blocked = hyperspherical_energy(weight, power=1, half_space=True, block_size=16)
    assert blocked.item() == pytest.approx(whole.item(), rel=1e-12)
    (g_whole,) = torch.autograd.grad(whole, weight)
    (g_blocked,) = torch.autograd.grad(blocked, weight)
    torch.testing.assert_close(g_blocked, g_whole, rtol=1e-10, atol=1e-12)


def test_energy_is_lower_for_spread_neurons_than_for_clustered_ones():
    spread = torch.eye(8)  # orthogonal neurons
    clustered = torch.ones(8, 8) + 0.1 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    for power, distance in itertools.product((0, 1, 2), ("euclidean", "angular")):
        assert hyperspherical_energy(spread, power=power, distance=distance) < hyperspherical_energy(clustered, power=power, distance=distance)


def test_descent_on_the_energy_pushes_neurons_apart():
    generator = torch.Generator().manual_seed(0)
    weight = (torch.ones(16, 8) + 0.2 * torch.randn(16, 8, generator=generator)).requires_grad_()

    def closest_pair_angle(w):
        unit = w / w.norm(dim=1, keepdim=True)
        cos = (unit @ unit.T).fill_diagonal_(-1)
        return math.degrees(math.acos(float(cos.max())))

    before = closest_pair_angle(weight.detach())
    optimizer = torch.optim.SGD([weight], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        hyperspherical_energy(weight, power=2).backward()
        optimizer.step()
    assert closest_pair_angle(weight.detach()) > 3 * before
    assert hyperspherical_energy(weight, power=2) < 0.5 * hyperspherical_energy(torch.ones(16, 8) + 0.2 * torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), power=2)


def test_the_energy_only_depends_on_directions():
    weight = torch.randn(5, 4)
    scaled = weight * torch.tensor([[1.0], [3.0], [0.1], [7.0], [2.0]])
    assert hyperspherical_energy(scaled).item() == pytest.approx(hyperspherical_energy(weight).item(), rel=1e-5)


def test_duplicate_neurons_give_a_finite_energy_and_gradient():
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    for distance in ("euclidean", "angular"):
        value = hyperspherical_energy(weight, power=2, distance=distance)
        (grad,) = torch.autograd.grad(value, weight)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_gradients_check_in_float64():
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for power, distance in itertools.product((0, 1, 2), ("euclidean", "angular")):
        assert torch.autograd.gradcheck(lambda w: hyperspherical_energy(w, power=power, distance=distance, half_space=True, block_size=2), (weight,))


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="power=3"):
        hyperspherical_energy(torch.randn(4, 3), power=3)
    with pytest.raises(ValueError, match="distance='geodesic'"):
        hyperspherical_energy(torch.randn(4, 3), distance="geodesic")
    with pytest.raises(ValueError, match="n >= 2 neurons"):
        hyperspherical_energy(torch.randn(1, 3))
