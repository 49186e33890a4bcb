"""Optimiser construction: parameter groups, LARS against a float64 reference, the by-name factory."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from nocollapse.errors import UserError
from nocollapse.train.optim import LARS, build_optimizer, describe_param_groups, split_param_groups


# ----------------------------------------------------------------------------------------------------------
# An independent reference: one tensor at a time, Python floats for the norms and branches.
def _reference_lars(
    params: list[torch.Tensor],
    grads_per_step: list[list[torch.Tensor]],
    *,
    excluded: list[bool],
    decays: list[float],
    lr: float,
    momentum: float,
    eta: float,
    clip: bool,
    denominator: str,
    eps: float = 0.0,
) -> list[list[torch.Tensor]]:
    """Parameters after each step (float64), following You et al. / BYOL / solo-learn as documented."""
    p = [x.detach().clone().double() for x in params]
    m = [torch.zeros_like(x) for x in p]
    history = []
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = g.double()
            wd = decays[i]
            if excluded[i]:
                u = g + wd * p[i]
            else:
                p_norm = math.sqrt(float((p[i] ** 2).sum()))
                if denominator == "update":
                    u = g + wd * p[i]
                    u_norm = math.sqrt(float((u**2).sum()))
                    ok = p_norm > 0 and u_norm > 0
                    trust = eta * p_norm / u_norm if ok else 1.0
                else:
                    g_norm = math.sqrt(float((g**2).sum()))
                    ok = p_norm > 0 and g_norm > 0
                    trust = eta * p_norm / (g_norm + wd * p_norm + eps) if ok else 1.0
                    u = g + wd * p[i] if ok else g
                if ok and clip:
                    trust = min(trust / lr, 1.0)
                u = trust * u
            m[i] = momentum * m[i] + u
            p[i] = p[i] - lr * m[i]
        history.append([x.clone() for x in p])
    return history


def _tiny_problem(seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """A weight matrix, a conv kernel, a bias and a norm scale; gradients for 3 steps.

    The conv kernel's gradients are tiny so that its trust ratio exceeds the lr (clipping bites there and
    not on the matrix).
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (2, 3, 3, 3), (3,), (4,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    scales = [1.0, 1e-3, 1.0, 1.0]
    grads = [
        [c * torch.randn(s, generator=gen, dtype=torch.float64) for s, c in zip(shapes, scales)] for _ in range(3)
    ]
    return params, grads


def _run_lars(params, grads_per_step, groups_spec, **kw) -> list[list[torch.Tensor]]:
    """Run :class:`LARS` on copies of ``params``; ``groups_spec`` is a list of (indices, group options)."""
    ps = [nn.Parameter(x.clone()) for x in params]
    groups = [{"params": [ps[i] for i in idx], **opts} for idx, opts in groups_spec]
    opt = LARS(groups, **kw)
    history = []
    for grads in grads_per_step:
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(ps, grads))  # gradients are read, never scaled
        history.append([p.detach().clone() for p in ps])
    return history


@pytest.mark.parametrize("denominator", ["update", "grad_plus_decay"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_lars_matches_reference(denominator: str, clip: bool, split: bool) -> None:
    params, grads = _tiny_problem()
    wd, lr, eta, mom = 0.05, 0.1, 0.02, 0.9  # with clip: one tensor below the cap, one above
    if split:  # matrices decayed and adapted; bias and norm scale excluded with no decay
        spec = [([0, 1], {"weight_decay": wd}), ([2, 3], {"weight_decay": 0.0, "lars_exclude": True})]
        excluded, decays = [False, False, True, True], [wd, wd, 0.0, 0.0]
    else:
        spec = [([0, 1, 2, 3], {})]
        excluded, decays = [False] * 4, [wd] * 4
    kw = dict(lr=lr, momentum=mom, weight_decay=wd, eta=eta, clip=clip, trust_denominator=denominator, eps=1e-8)
    got = _run_lars(params, grads, spec, **kw)
    want = _reference_lars(
        params,
        grads,
        excluded=excluded,
        decays=decays,
        lr=lr,
        momentum=mom,
        eta=eta,
        clip=clip,
        denominator=denominator,
        eps=1e-8,
    )
    for step_got, step_want in zip(got, want):
        for a, b in zip(step_got, step_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_clip_makes_lr_a_cap_on_the_trust_ratio() -> None:
    # solo-learn's clip: scale = min(trust/lr, 1), so the step is min(trust, lr)·u — lr caps the layer's
    # rate instead of multiplying it.
    params, grads = _tiny_problem()
    lr, wd, eta = 0.1, 0.05, 0.02
    out = _run_lars(params, grads[:1], [([0, 1], {})], lr=lr, weight_decay=wd, eta=eta, clip=True, momentum=0.9)[0]
    u = [g + wd * p for g, p in zip(grads[0][:2], params[:2])]
    trust = [eta * p.norm() / v.norm() for p, v in zip(params[:2], u)]
    assert trust[0] < lr < trust[1]  # the matrix is below the cap, the tiny-gradient kernel above it
    torch.testing.assert_close(out[0], params[0] - trust[0] * u[0])
    torch.testing.assert_close(out[1], params[1] - lr * u[1])


def test_mixed_dtypes_in_one_group_match_separate_runs() -> None:
    # LARS buckets tensors by (device, dtype) to stack their norms; the buckets must not interact.
    params, grads = _tiny_problem()
    half = [0, 2]  # run these in float32, the others in float64
    ps = [nn.Parameter(x.float() if i in half else x.clone()) for i, x in enumerate(params)]
    opt = LARS(ps, lr=0.1, weight_decay=0.05, eta=0.02)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g.to(p.dtype)
        opt.step()
    for i, p in enumerate(ps):
        own_grads = [[s[i].to(p.dtype)] for s in grads]
        alone = _run_lars([params[i].to(p.dtype)], own_grads, [([0], {})], lr=0.1, weight_decay=0.05, eta=0.02)
        torch.testing.assert_close(p.detach(), alone[-1][0], rtol=0, atol=0)


def test_clip_at_zero_lr_keeps_the_full_update_in_momentum() -> None:
    # trust/lr → ∞ at lr = 0, so min(·, 1) = 1: nothing moves, the buffer holds the unscaled g + λp.
    params, grads = _tiny_problem()
    p = nn.Parameter(params[0].clone())
    opt = LARS([p], lr=0.0, weight_decay=0.05, eta=0.02, clip=True)
    p.grad = grads[0][0].clone()
    opt.step()
    torch.testing.assert_close(p.detach(), params[0], rtol=0, atol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], grads[0][0] + 0.05 * params[0])


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_excluded_group_is_sgd_with_momentum(wd: float) -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    reference = copy.deepcopy(model)
    lars = LARS([{"params": model.parameters(), "lars_exclude": True}], lr=0.1, momentum=0.9, weight_decay=wd)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)
    for _ in range(3):
        x = torch.randn(8, 5)
        for m, opt in ((model, lars), (reference, sgd)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("denominator", ["update", "grad_plus_decay"])
def test_trust_ratio_is_one_at_zero_norms(denominator: str) -> None:
    zero_param = nn.Parameter(torch.zeros(3, 3))  # ‖p‖ = 0 (a zero-initialised layer)
    still = nn.Parameter(torch.ones(2, 2))  # ‖g‖ = 0
    g = torch.tensor([[1.0, -2.0, 0.5]] * 3)
    opt = LARS([zero_param, still], lr=0.5, momentum=0.9, eta=1e-3, trust_denominator=denominator)
    zero_param.grad, still.grad = g.clone(), torch.zeros(2, 2)
    opt.step()
    # Trust 1: the zero tensor takes the raw SGD step; with no decay a zero gradient moves nothing.
    torch.testing.assert_close(zero_param.detach(), -0.5 * g)
    torch.testing.assert_close(still.detach(), torch.ones(2, 2))
    for p in (zero_param, still):
        assert torch.isfinite(opt.state[p]["momentum_buffer"]).all()


def test_zero_grad_with_decay_follows_each_denominator() -> None:
    # ‖g‖ = 0 but λ > 0: BYOL's form adapts u = λp (‖u‖ > 0, trust η/λ); solo-learn skips decay and
    # scaling.
    for denominator, expected in (("update", 1.0 - 0.5 * 1e-3), ("grad_plus_decay", 1.0)):
        p = nn.Parameter(torch.ones(4, dtype=torch.float64))
        opt = LARS([p], lr=0.5, weight_decay=0.1, eta=1e-3, trust_denominator=denominator)
        p.grad = torch.zeros(4, dtype=torch.float64)
        opt.step()
        # update: p − lr·(η/λ)·λp = p(1 − lr·η).
        torch.testing.assert_close(p.detach(), torch.full((4,), expected, dtype=torch.float64))


def test_state_dict_round_trip_gives_identical_next_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    data = [torch.randn(16, 6) for _ in range(3)]

    def step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()

    groups = split_param_groups(model, weight_decay=1e-4)
    opt = build_optimizer("lars", groups, lr=0.3, weight_decay=1e-4, eta=0.02, clip=True)
    for x in data[:2]:
        step(model, opt, x)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    resumed.load_state_dict(saved["model"])
    opt2 = build_optimizer("lars", split_param_groups(resumed, weight_decay=0.5), lr=1.0, weight_decay=0.5)
    opt2.load_state_dict(saved["opt"])  # restores lr, decay, eta, clip per group and the momentum buffers
    assert opt2.param_groups[0]["clip"] is True and opt2.param_groups[0]["weight_decay"] == 1e-4

    step(model, opt, data[2])
    step(resumed, opt2, data[2])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_split_param_groups_counts() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    groups = split_param_groups([model, frozen, model[3]], weight_decay=1e-5)  # model[3] twice: listed once
    decay, no_decay = groups
    assert (decay["name"], decay["weight_decay"], decay["lars_exclude"]) == ("decay", 1e-5, False)
    assert (no_decay["name"], no_decay["weight_decay"], no_decay["lars_exclude"]) == ("no_decay", 0.0, True)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    bias_and_norm = [model[0].bias, model[1].weight, model[1].bias, model[3].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in bias_and_norm}
    text = describe_param_groups(groups)
    assert "decay: 2 tensors, 116 params" in text  # 4·3·3·3 + 2·4
    assert "no_decay: 4 tensors, 14 params" in text  # 4 + 4 + 4 + 2


def test_split_param_groups_accepts_named_parameters_and_drops_empty_groups() -> None:
    lin = nn.Linear(3, 3, bias=False)
    groups = split_param_groups(lin.named_parameters(), weight_decay=0.1)
    assert [g["name"] for g in groups] == ["decay"] and groups[0]["params"][0] is lin.weight
    with pytest.raises(TypeError, match="module"):
        split_param_groups(["weight"], weight_decay=0.1)  # type: ignore[list-item]


def test_build_optimizer_bad_name() -> None:
    groups = split_param_groups(nn.Linear(2, 2), weight_decay=0.0)
    with pytest.raises(UserError, match="lars, adamw, adam, sgd"):
        build_optimizer("rmsprop", groups, lr=0.1, weight_decay=0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["lars", "adamw", "adam", "sgd"])
def test_build_optimizer_respects_group_decay(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt = build_optimizer(name, split_param_groups(model, weight_decay=0.1), lr=1e-2, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_adamw_decay_is_decoupled_and_adam_is_l2() -> None:
    # A zero gradient isolates the decay: AdamW shrinks p by lr·λ; Adam's L2 term goes through the
    # normalised moment, so its first step is lr·sign(p) (≈), not lr·λ·p.
    for name, expected in (("adamw", 1.0 - 0.1 * 0.5), ("adam", 1.0 - 0.1)):
        p = nn.Parameter(torch.ones(2, 2))
        opt = build_optimizer(name, [{"params": [p], "weight_decay": 0.5}], lr=0.1, weight_decay=0.0)
        p.grad = torch.zeros(2, 2)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full((2, 2), expected), rtol=1e-5, atol=1e-6)
