"""Frozen features of an encoder (or of a method's projections), or of raw pixels, for evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from nocollapse.augment.views import AugmentConfig, ViewGenerator

if TYPE_CHECKING:
    from nocollapse.methods import Method

ALIGNMENT_IMAGES = 2048  # test images whose augmented views give the positive pairs of the alignment score
ALIGNMENT_SEED = 0  # fixed, not the run's seed: every run is measured on the same views of the same images


def standardize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) floats per-channel standardised, ``(x − mean)/std``; unchanged when ``mean`` is empty."""
    if mean:
        x = (x - torch.tensor(mean, device=x.device).view(1, -1, 1, 1)) / torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return x


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, C, H, W) → float32 in [0, 1], then per-channel standardised when mean/std are given."""
    return standardize(images.float().div_(255), mean, std)


def _eval_outputs(
    network: nn.Module,
    batches: Iterator[Tensor],
    forward: Callable[[Tensor], Tensor] | None,
    device: torch.device,
    channels_last: bool,
    amp: bool,
) -> Tensor:
    """``forward(x)`` (default ``network(x)``) of each standardised batch, float32, with ``network`` in
    eval mode; its train/eval mode is restored afterwards, also when the forward fails.

    ``amp`` (bf16 autocast) moves kNN accuracy by up to ~0.2 points: on Fashion-MNIST
    under CPU bf16 autocast (``benchmarks/eval_precision.py``: a 10k-image bank, 5k test images, k = 20)
    the random-init default ConvNet scored +0.20 and +0.22 points on two subsets, the same ConvNet after
    300 supervised steps −0.04; the features were within 3–5e-3 relative of float32. Good enough for the
    training loop's per-epoch monitor, which wants speed; the final evaluation
    (:func:`~nocollapse.train.evaluation.evaluate_run`) extracts in float32, so that its table does not
    depend on the device it ran on.
    """
    forward = forward or network
    was_training = network.training
    network.eval()
    try:
        chunks = []
        for x in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                chunks.append(forward(x).float())
    finally:
        network.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def encoder_features(
    encoder: nn.Module,
    images: Tensor,
    *,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    amp: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """(N, D) float32 features of uint8 ``images`` from ``encoder`` in eval mode, no augmentation.

    The forward pass runs under bf16 autocast when ``amp``. The encoder's train/eval mode is
    restored afterwards. Features come back on ``device`` (default: the encoder's device); images move
    there one batch at a time, so the dataset may stay on the CPU. ``forward`` replaces
    ``encoder(x)``: ``encoder_features(method, images, forward=method.embed)`` gives the projections
    (:func:`projection_features` gives them from features already extracted).
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    batches = (normalize_images(images[start : start + batch_size].to(device, non_blocking=True), mean, std)
               for start in range(0, images.shape[0], batch_size))
    return _eval_outputs(encoder, batches, forward, device, channels_last, amp)


@torch.no_grad()
def view_features(
    encoder: nn.Module,
    views: Tensor,
    *,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    batch_size: int = 1024,
    channels_last: bool = False,
    amp: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """(M, B, D) float32 features of (M, B, C, H, W) views in [0, 1] (:func:`positive_views`), as
    :func:`encoder_features` computes them (eval mode, standardised with ``mean``/``std``), on the
    views' device."""
    num_views, count = views.shape[:2]
    flat = views.flatten(0, 1)  # (M·B, C, H, W); eval-mode BatchNorm does not mix samples, so batches may span views
    batches = (standardize(flat[start : start + batch_size], mean, std) for start in range(0, flat.shape[0], batch_size))
    return _eval_outputs(encoder, batches, forward, views.device, channels_last, amp).view(num_views, count, -1)


@torch.no_grad()
def projection_features(method: Method, features: Tensor, *, batch_size: int = 1024, amp: bool = False) -> Tensor:
    """(..., d) float32 projections of (..., D) encoder ``features`` (:func:`encoder_features`, :func:`view_features`)
    through ``method``'s head in eval mode: the projections of the images without a second pass through the encoder."""
    flat = features.flatten(0, -2)
    batches = (flat[start : start + batch_size] for start in range(0, flat.shape[0], batch_size))
    return _eval_outputs(method, batches, method.project, features.device, False, amp).view(*features.shape[:-1], -1)


def positive_views(
    images: Tensor,
    augment: AugmentConfig,
    *,
    count: int = ALIGNMENT_IMAGES,
    seed: int = ALIGNMENT_SEED,
    device: torch.device | str | None = None,
) -> Tensor:
    """(M, B, C, S, S) float32 views in [0, 1] of B = min(``count``, N) of the uint8 (N, C, H, W) ``images``.

    The run's own augmentation (M = ``augment.num_views``) without its standardisation, so that raw
    pixels can be scored on the same views (:func:`standardize` them for a network). The images (a
    random subset: test sets may be sorted by class) and every augmentation draw follow from ``seed``:
    the same call gives the same views, on ``device`` (default: the images').
    """
    device = torch.device(device) if device is not None else images.device
    subset = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    make_views = ViewGenerator(dataclasses.replace(augment, mean=(), std=()))
    return make_views(images[subset].to(device), torch.Generator(device=device).manual_seed(seed))


def pixel_features(images: Tensor) -> Tensor:
    """(N, C·H·W) raw pixels in [0, 1] — the baseline every learned representation must beat."""
    return images.reshape(images.shape[0], -1).float().div_(255)
