"""The EMA target network of BYOL-style methods."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMATarget(nn.Module):
    """A frozen copy of an online network whose parameters follow it by exponential moving average.

    ``ξ ← τ·ξ + (1 − τ)·θ`` after every optimiser step, via :meth:`update` — never as a side effect of
    ``forward``. Only parameters are averaged: the target's BatchNorm running statistics are its own,
    accumulated by its own train-mode forward passes on its batches (as in BYOL), so the target sees
    the same batch statistics the online network would. The copy lives in ``state_dict`` and resumes
    exactly.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(online)
        self.network.requires_grad_(False)

    def forward(self, *args: Tensor) -> Tensor:
        return self.network(*args)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """Move the target towards ``online``: ``ξ ← τ ξ + (1 − τ) θ`` with ``τ = momentum`` in [0, 1]."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}")
        target_params = list(self.network.parameters())
        online_params = list(online.parameters())
        if len(target_params) != len(online_params):
            raise ValueError("the online network does not have the target's architecture")
        if momentum == 1.0:
            return
        # One fused multi-tensor kernel instead of a Python loop over ~60 tensors.
        torch._foreach_lerp_(target_params, [p.detach() for p in online_params], 1.0 - momentum)
