"""What a regularizer is: a weighted loss term that any method adds to its own objective."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from torch import Tensor

# What a method offers its regularizers each step (a regularizer's ``consumes`` names a subset):
#   embeddings   (M, B, d) online projections of the M views, before any normalisation
#   online       the online networks (``nn.Module``): the trained weights, never an EMA target
#   generator    a ``torch.Generator`` seeded per step by the training loop (None: the global one)
INPUTS = ("embeddings", "online", "generator")


class Regularizer(Protocol):
    """A loss term ``R(inputs) → scalar`` that attaches to any method with a weight.

    ``consumes`` lists the inputs it needs, from :data:`INPUTS`; the method calls it with exactly
    those as keyword arguments. It is unweighted: the method multiplies by the configured weight and
    logs the raw value under the regularizer's name.
    """

    consumes: ClassVar[tuple[str, ...]]

    def __call__(self, **inputs: Any) -> Tensor: ...
