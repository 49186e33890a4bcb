"""Brownian diffusive regularizer: a random kick per embedding each step (MSBReg's local dispersion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nocollapse.losses.msbreg import brownian_diffusive_loss


@dataclass(frozen=True)
class Brownian:
    """:func:`~nocollapse.losses.msbreg.brownian_diffusive_loss` of the online projections, noise ``N(0, σ²I)``."""

    sigma: float = 1.0
    consumes: ClassVar[tuple[str, ...]] = ("embeddings", "generator")

    def __call__(self, *, embeddings: Tensor, generator: torch.Generator | None) -> Tensor:
        return brownian_diffusive_loss(embeddings, sigma=self.sigma, generator=generator)
