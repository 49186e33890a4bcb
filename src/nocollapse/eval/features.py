"""Frozen features of an encoder, or of raw pixels, for kNN and linear probes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, C, H, W) → float32 in [0, 1], then per-channel standardised when mean/std are given."""
    x = images.float().div_(255)
    if mean:
        x = (x - torch.tensor(mean, device=x.device).view(1, -1, 1, 1)) / torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return x


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
    amp: bool = True,
) -> Tensor:
    """(N, D) float32 features of uint8 ``images`` from ``encoder`` in eval mode, no augmentation.

    On CUDA the forward pass runs under bf16 autocast when ``amp``. The encoder's train/eval mode is restored afterwards. Features come back on ``device`` (default:
    the encoder's device); images move there one batch at a time, so the dataset may stay on the CPU.
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = normalize_images(images[start : start + batch_size].to(device, non_blocking=True), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            chunks.append(encoder(x).float())
    encoder.train(was_training)
    return torch.cat(chunks)


def pixel_features(images: Tensor) -> Tensor:
    """(N, C·H·W) raw pixels in [0, 1] — the baseline every learned representation must beat."""
    return images.reshape(images.shape[0], -1).float().div_(255)
