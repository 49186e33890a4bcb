"""Schedules as pure functions of the step, and the EMA target that follows the online network."""

import math

import pytest
import torch
from torch import nn

from nocollapse.nn import EMATarget, mlp
from nocollapse.train.schedules import ema_momentum, warmup_cosine


def test_ema_momentum_at_start_middle_and_end():
    assert ema_momentum(0, 1000, base=0.99) == pytest.approx(0.99)
    assert ema_momentum(500, 1000, base=0.99) == pytest.approx(0.995)
    assert ema_momentum(1000, 1000, base=0.99) == pytest.approx(1.0)
    values = [ema_momentum(k, 100, base=0.9) for k in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:])), "τ must rise monotonically"


def test_a_constant_ema_schedule_keeps_tau_base_and_tau_0_makes_the_target_the_online_network():
    assert [ema_momentum(k, 100, base=0.0, schedule="constant") for k in (0, 50, 100)] == [0.0, 0.0, 0.0]
    assert ema_momentum(50, 100, base=0.0) == pytest.approx(0.5)  # the cosine from τ_base = 0 is not τ = 0
    online, generator = mlp(4, 8, 3), torch.Generator().manual_seed(0)
    target = EMATarget(online)
    for p in online.parameters():
        p.data.add_(torch.randn(p.shape, generator=generator))
    target.update(online, ema_momentum(10, 100, base=0.0, schedule="constant"))
    assert all(torch.equal(p, q) for p, q in zip(online.parameters(), target.parameters()))


def test_warmup_then_cosine():
    base, total, warmup = 2.0, 110, 10
    assert warmup_cosine(0, total, base=base, warmup_steps=warmup) == pytest.approx(0.2)
    assert warmup_cosine(9, total, base=base, warmup_steps=warmup) == pytest.approx(base)
    assert warmup_cosine(10, total, base=base, warmup_steps=warmup) == pytest.approx(base)
    assert warmup_cosine(60, total, base=base, warmup_steps=warmup) == pytest.approx(base / 2)
    assert warmup_cosine(110, total, base=base, warmup_steps=warmup, final=0.1) == pytest.approx(0.1)
    assert warmup_cosine(35, total, base=base, warmup_steps=warmup) == pytest.approx(base * (1 + math.cos(math.pi / 4)) / 2)


def make_online():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_target_starts_as_a_copy_and_has_no_gradients():
    online = make_online()
    target = EMATarget(online)
    for p, q in zip(online.parameters(), target.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
        assert not q.requires_grad


def test_update_follows_the_formula_and_moves_only_the_target():
    online = make_online()
    target = EMATarget(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before_target = [q.clone() for q in target.parameters()]
    before_online = [p.clone() for p in online.parameters()]
    target.update(online, momentum=0.9)
    for q0, q, p in zip(before_target, target.parameters(), online.parameters()):
        torch.testing.assert_close(q, 0.9 * q0 + 0.1 * p)
    for p0, p in zip(before_online, online.parameters()):
        assert torch.equal(p0, p), "the EMA update must never move the online network"
    target.update(online, momentum=0.0)
    for q, p in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(q, p)
    frozen = [q.clone() for q in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update(online, momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, target.parameters()))


def test_target_batchnorm_statistics_are_its_own():
    online = make_online()
    target = EMATarget(online)
    target(torch.randn(16, 4) * 5 + 3)
    online_mean = online[1].running_mean
    target_mean = target.network[1].running_mean
    assert not torch.equal(online_mean, target_mean)
    target.update(online, momentum=0.5)
    assert torch.equal(target.network[1].running_mean, target_mean), "buffers are not averaged"


def test_update_rejects_bad_momentum_and_architecture():
    online = make_online()
    target = EMATarget(online)
    with pytest.raises(ValueError):
        target.update(online, momentum=1.5)
    with pytest.raises(ValueError):
        target.update(mlp(4, 8, 3, num_layers=1), momentum=0.5)
