"""Float32 maths for every loss, also under autocast: one decorator, :func:`float32_loss`.

Autocast casts each matrix product to bf16/fp16 whatever dtype its operands have, so upcasting the
inputs is not enough inside an autocast region: the losses here are made of small differences between
near-equal quantities (cosines close to 1, eigenvalues close to 1/d, the distances of close neurons),
which bf16's 8 significant bits erase. Measured under CPU bf16 autocast on the cases of
``tests/test_autocast.py`` before this guard: the s = 2 hyperspherical energy of neurons 1e-3 apart came
out 1.1e5 instead of 3.4e5 (angular, s = 1: inf instead of 1794), BYOL's loss of predictions 1e-2 from
their targets 0 instead of 4.4e-4, the uniformity of near-duplicate rows 0 instead of −4.5e-6. That test
runs every exported loss and every regularizer under autocast against its float32 value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor

P = ParamSpec("P")
R = TypeVar("R")


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or unchanged if it is float64 (or not floating point)."""
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.is_floating_point() else x


def float32_loss(loss: Callable[P, R]) -> Callable[P, R]:
    """``loss`` run with autocast disabled and every floating tensor argument in float32 at least.

    Autocast is disabled for the device type of the first tensor argument (the one the training loop's
    autocast region is for); gradients flow back through the upcast to the caller's dtype. Activation
    checkpointing inside the loss recomputes with autocast off too, as it restores the forward's state.
    """

    @functools.wraps(loss)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, Tensor)]
        if not tensors:
            raise TypeError(f"{loss.__name__} takes tensors and was given none")
        upcast = lambda value: at_least_float32(value) if isinstance(value, Tensor) else value
        with torch.autocast(tensors[0].device.type, enabled=False):
            return loss(*map(upcast, args), **{name: upcast(value) for name, value in kwargs.items()})

    return guarded
