"""W-MSE: MSE between positives after whitening the batch (Ermolov et al., ICML 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nocollapse.losses.whitening import whitened_mse
from nocollapse.methods.base import Method
from nocollapse.nn.heads import mlp


class WMSE(Method):
    """One network, no target and no predictor: ``z = h(f(v))``, loss :func:`~nocollapse.losses.whitened_mse`.

    Whitening each sub-batch of ``w_size`` embeddings makes them decorrelated with unit variance, so
    the views can be pulled together without the trivial constant solution: collapse is excluded by
    construction rather than by an asymmetry. With M = 4 views (W-MSE 4) every image gives 6 pairs.

    Args:
        encoder: backbone mapping images to (B, encoder.output_dim) features.
        head_hidden, embedding_dim: head ``Linear(D→h) → BN → ReLU → Linear(h→d)``; d = 64 on CIFAR.
        w_size: rows per whitened sub-batch, > d (the working rule is 2d); the batch must be a multiple.
        w_iter: random partitions per step (the loss is averaged over them).
        eps: shrinkage of the covariance towards I before Cholesky; 0 as in the paper.
    """

    def __init__(self, encoder: nn.Module, *, head_hidden: int = 1024, embedding_dim: int = 64, w_size: int = 128, w_iter: int = 1, eps: float = 0.0) -> None:
        super().__init__()
        if w_size <= embedding_dim:
            raise ValueError(f"w_size={w_size} must exceed the embedding dimension {embedding_dim}")
        self.encoder = encoder
        # An output bias, as the official ``get_head`` (plain ``nn.Linear`` layers).
        self.head = mlp(encoder.output_dim, head_hidden, embedding_dim, output_bias=True)
        self.embedding_dim, self.w_size, self.w_iter, self.eps = embedding_dim, w_size, w_iter, eps

    def objective(self, views: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``{"wmse": whitened MSE}`` and the (M, B, d) embeddings (before whitening) of (M, B, C, H, W) views.

        The encoder sees each view on its own (its BatchNorm statistics stay per view) and the head
        sees all views together, as in the official implementation. Sub-batch permutations come
        from the global RNG, which checkpoints carry, so a resumed run draws the same ones.
        """
        num_views, batch = views.shape[:2]
        features = torch.cat([self.encoder(v) for v in views])  # (M·B, D)
        embeddings = self.head(features).view(num_views, batch, -1)  # (M, B, d)
        whitened = whitened_mse(self.gather_batch(embeddings), w_size=self.w_size, w_iter=self.w_iter, eps=self.eps)
        return {"wmse": whitened}, embeddings

    def project(self, features: Tensor) -> Tensor:
        return self.head(features)
