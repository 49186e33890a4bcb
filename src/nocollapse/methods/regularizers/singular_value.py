"""Singular value regularizer: flattens the spectrum of the online projections (MSBReg's global dispersion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from nocollapse.losses.msbreg import singular_value_loss


@dataclass(frozen=True)
class SingularValue:
    """:func:`~nocollapse.losses.msbreg.singular_value_loss` of the M views' online projections."""

    target: str = "uniform"
    consumes: ClassVar[tuple[str, ...]] = ("embeddings",)

    def __call__(self, *, embeddings: Tensor) -> Tensor:
        return singular_value_loss(embeddings, target=self.target)
