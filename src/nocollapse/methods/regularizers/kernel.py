"""Kernel uniformity regularizer: the MMD between the online projections and the uniform law on the sphere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from nocollapse.losses.kernels import SFRIK_KERNEL, GegenbauerKernel, kernel_uniformity


@dataclass(frozen=True)
class KernelUniformity:
    """:func:`~nocollapse.losses.kernels.kernel_uniformity` of each view's online projections, averaged
    over the views, under ``φ = Σ_ℓ b_ℓ P_ℓ^{(q)}`` (SFRIK's regulariser on any method)."""

    kernel: GegenbauerKernel = SFRIK_KERNEL
    consumes: ClassVar[tuple[str, ...]] = ("embeddings",)

    def __call__(self, *, embeddings: Tensor) -> Tensor:
        return kernel_uniformity(embeddings, self.kernel)
