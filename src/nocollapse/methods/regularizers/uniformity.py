"""Terms that spread the online projections over the hypersphere (Durrant & Leontidis; Wang & Isola)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from nocollapse.losses.uniformity import alignment_loss, info_nce_loss, uniformity_loss


@dataclass(frozen=True)
class Contrastive:
    """:func:`~nocollapse.losses.uniformity.info_nce_loss` of the online projections: BYOL plus negatives."""

    temperature: float = 0.2
    consumes: ClassVar[tuple[str, ...]] = ("embeddings",)

    def __call__(self, *, embeddings: Tensor) -> Tensor:
        return info_nce_loss(embeddings, temperature=self.temperature)


@dataclass(frozen=True)
class Uniformity:
    """:func:`~nocollapse.losses.uniformity.uniformity_loss` of the online projections (the repulsive half of InfoNCE)."""

    t: float = 2.0
    consumes: ClassVar[tuple[str, ...]] = ("embeddings",)

    def __call__(self, *, embeddings: Tensor) -> Tensor:
        return uniformity_loss(embeddings, t=self.t)


@dataclass(frozen=True)
class Alignment:
    """:func:`~nocollapse.losses.uniformity.alignment_loss` of the online projections (the attractive half)."""

    alpha: float = 2.0
    consumes: ClassVar[tuple[str, ...]] = ("embeddings",)

    def __call__(self, *, embeddings: Tensor) -> Tensor:
        return alignment_loss(embeddings, alpha=self.alpha)
