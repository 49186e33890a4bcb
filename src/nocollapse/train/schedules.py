"""Schedules as pure functions of the global step: trivially tested, exact on resume."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, *, base: float, warmup_steps: int = 0, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine decay to ``final`` at ``total_steps``.

    ``v(k) = base·(k+1)/W`` for k < W, else ``final + (base − final)·(1 + cos(π·(k − W)/(K − W)))/2``.
    The warm-up starts at ``base/W`` rather than 0 so that the first step already moves the weights.
    """
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + (base - final) * (1 + math.cos(math.pi * progress)) / 2


def ema_momentum(step: int, total_steps: int, *, base: float, schedule: str = "cosine") -> float:
    """BYOL's target momentum ``τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2``: τ_base at k=0, 1 at k=K; ``schedule="constant"``:
    τ_base at every step (BYOL's ablation "τ = 0 over the full training" is base 0, constant)."""
    if schedule == "constant":
        return base
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def warmup_step_decay(step: int, total_steps: int, *, base: float, warmup_steps: int = 0,
                      milestones: tuple[float, ...] = (), factor: float = 0.2) -> float:
    """Linear warm-up to ``base``, then ``base·factor^j`` after the j-th milestone (W-MSE's schedule).

    ``milestones`` are fractions of ``total_steps`` (W-MSE's drops at epochs E−50 and E−25 of E = 1000
    are ``(0.95, 0.975)``), so a preset keeps its shape whatever the run length.
    """
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    passed = sum(step >= fraction * total_steps for fraction in milestones)
    return base * factor**passed
