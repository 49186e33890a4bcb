"""The shape every method shares: its own loss terms, plus weighted regularizers attached by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nocollapse.methods.regularizers import INPUTS, Regularizer


def normalized_std(embeddings: Tensor) -> Tensor:
    """``mean_{m,k} std_b(ẑ_mbk)`` with ``ẑ = z/‖z‖`` over the last axis: SimSiam's collapse signal per view.

    For (M, B, d) embeddings, the standard deviation over the B ≥ 2 rows of each view's ℓ2-normalised
    embeddings (normalised by B − 1), averaged over the d dimensions and the M views, without gradient.
    About ``1/√d`` when the embeddings spread over the sphere, 0 when they all point the same way.
    """
    return F.normalize(embeddings.detach().float(), dim=-1).std(dim=-2).mean()


def own_batch(embeddings: Tensor) -> Tensor:
    """The batch statistics of one process: its own (M, B, d) embeddings."""
    return embeddings


class Method(nn.Module, ABC):
    """A self-supervised method: :meth:`objective` gives its loss terms and online projections;
    :meth:`forward` adds the attached regularizers and the total.

    Subclasses set ``encoder`` (what evaluation uses) and implement :meth:`objective` and :meth:`project`;
    methods with an EMA target also implement ``update_target(momentum)`` and override
    :meth:`online_networks`.

    ``gather_batch`` maps this process's (M, B, d) embeddings to those of the batch whose statistics a
    loss needs (whitening, MMD, singular values, uniformity, InfoNCE). It is the identity in one
    process; data-parallel training sets it to a differentiable all-gather
    (:func:`nocollapse.train.distributed.gather_views`). Per-sample terms never need it.
    """

    encoder: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.regularizers: list[tuple[str, float, Regularizer]] = []
        self.gather_batch: Callable[[Tensor], Tensor] = own_batch

    @abstractmethod
    def objective(self, views: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``(terms, embeddings)``: the method's own named loss terms (summed into the loss) and the
        (M, B, d) online projections of the (M, B, C, H, W) views, which regularizers see."""

    @abstractmethod
    def project(self, features: Tensor) -> Tensor:
        """(B, d) online projections of (B, D) encoder features: the head between the encoder and the loss."""

    def embed(self, images: Tensor) -> Tensor:
        """(B, d) online projections of a (B, C, H, W) batch: where the loss terms act.

        Evaluation measures their geometry beside the encoder's; the caller picks train or eval mode. Given the
        features already, :meth:`project` them instead of a second pass through the encoder."""
        return self.project(self.encoder(images))

    def online_networks(self) -> nn.Module:
        """The networks the optimiser trains (regularizers on weights see these, never a target)."""
        return self

    def attach(self, name: str, weight: float, regularizer: Regularizer) -> None:
        """Add ``weight · regularizer`` to the loss; its raw value is reported as ``name``."""
        unknown = set(regularizer.consumes) - set(INPUTS)
        if unknown:
            raise ValueError(f"regularizer {name!r} consumes {sorted(unknown)}, which methods do not provide (they provide {INPUTS})")
        if name in ("loss", *(n for n, _, _ in self.regularizers)):
            raise ValueError(f"a term named {name!r} is already attached")
        self.regularizers.append((name, weight, regularizer))

    def forward(self, views: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss": Σ terms + Σ weight·regularizer, **terms, **regularizers, "embedding_std": ...}`` for
        (M, B, C, H, W) views.

        ``embedding_std`` is no loss term: it is :func:`normalized_std` of this process's online
        projections, the collapse signal the training loop logs and watches.

        ``generator`` feeds stochastic regularizers (the Brownian kick); the training loop passes
        one seeded per step so that a run and its resumes draw the same noise.
        """
        terms, embeddings = self.objective(views)
        loss = sum(terms.values())
        spread = normalized_std(embeddings)
        # Regularizers see the global batch: batch statistics need it, and per-sample terms (alignment, the
        # Brownian kick, drawn from a generator seeded alike on every process) give the same mean either way.
        if any("embeddings" in regularizer.consumes for _, _, regularizer in self.regularizers):
            embeddings = self.gather_batch(embeddings)  # once, however many regularizers read it
        provide: dict[str, Callable[[], Any]] = {"embeddings": lambda: embeddings, "online": self.online_networks, "generator": lambda: generator}
        for name, weight, regularizer in self.regularizers:
            if name in terms:  # a regularizer named like one of the method's terms would hide it in the log
                raise ValueError(f"regularizer {name!r} has the name of one of {type(self).__name__}'s own loss terms; attach it under another name")
            value = regularizer(**{key: provide[key]() for key in regularizer.consumes})
            terms[name] = value
            loss = loss + weight * value
        return {"loss": loss, **terms, "embedding_std": spread}
