"""SFRIK: invariance plus the MMD to the uniform law under a rotation-invariant kernel (Zheng et al., ICLR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nocollapse.losses.kernels import GegenbauerKernel, kernel_uniformity
from nocollapse.losses.uniformity import alignment_loss
from nocollapse.methods.base import Method
from nocollapse.nn.heads import mlp


class SFRIK(Method):
    """One network, no target and no predictor: ``ẑ = normalize(g(f(v)))`` and

        ``L = λ_inv · MSE(ẑ¹, ẑ²) + λ_mmd · mean_m Ψ(Z^m)``,  ``Ψ(Z) = (1/N²) Σ_{i,j} φ(ẑᵢᵀẑⱼ)``

    with ``φ = Σ_ℓ b_ℓ P_ℓ^{(q)}`` (:func:`~nocollapse.losses.kernels.kernel_uniformity`): the views
    of an image are pulled together while the batch is pushed towards the uniform law on the sphere,
    which excludes collapse as whitening does, but at a cost linear in q. MSE is the mean over the
    N·q elements, so it is ``alignment/q``; hence the paper's large λ_inv (40000 at q = 32768, about
    1.2 per unit of ``‖ẑ¹ − ẑ²‖²``). With M > 2 views the MSE is averaged over the view pairs.

    Args:
        encoder: backbone mapping images to (B, encoder.output_dim) features.
        projector_hidden, projection_dim: projector ``D → h → h → q`` (Linear, BN, ReLU); the paper's
            8192-8192-32768.
        invariance, mmd: λ_inv and λ_mmd.
        kernel_weights: b_1, b_2, … of the kernel (the paper's (1, 40, 40)).
    """

    def __init__(self, encoder: nn.Module, *, projector_hidden: int = 1024, projection_dim: int = 2048, invariance: float = 2500.0,
                 mmd: float = 1.0, kernel_weights: Sequence[float] = (1.0, 40.0, 40.0)) -> None:
        super().__init__()
        if projection_dim < 2:
            raise ValueError(f"SFRIK's embeddings live on the sphere S^(q-1) and need q >= 2, got projection_dim={projection_dim}")
        self.encoder = encoder
        # No output bias, as the official ``Projector`` (``nn.Linear(f[-2], f[-1], bias=False)``).
        self.projector = mlp(encoder.output_dim, projector_hidden, projection_dim, num_layers=3, output_bias=False)
        self.kernel = GegenbauerKernel(tuple(kernel_weights))
        self.invariance, self.mmd = invariance, mmd

    def objective(self, views: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``{"invariance": λ_inv·MSE, "mmd": λ_mmd·Ψ}`` and the (M, B, q) projections of (M, B, C, H, W) views.

        Each view goes through the encoder and the projector on its own, so BatchNorm statistics are
        per view, as in the official code's ``projector(backbone(x))`` once per view (one joint batch
        would pool the views' statistics in the projector's BatchNorms).
        """
        num_views = views.shape[0]
        if num_views < 2:
            raise ValueError(f"SFRIK needs at least 2 views per image, got {num_views} (set augment.num_views)")
        projections = torch.stack([self.projector(self.encoder(v)) for v in views])  # (M, B, q)
        dim = projections.shape[-1]
        return {"invariance": self.invariance * alignment_loss(projections) / dim,
                "mmd": self.mmd * kernel_uniformity(self.gather_batch(projections), self.kernel)}, projections

    def project(self, features: Tensor) -> Tensor:
        return self.projector(features)
