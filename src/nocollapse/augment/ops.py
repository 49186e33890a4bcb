"""Batched image augmentations that run on whatever device the batch is on.

Every op takes a float batch ``x`` of shape (B, C, H, W) with values in [0, 1] and draws one set of
parameters per sample from ``generator`` (a :class:`torch.Generator` on ``x``'s device; ``None`` uses
the global RNG). No per-sample Python loops: each op is a handful of batched kernels, so augmentation
costs little next to the network, on a CPU as on a GPU. The same generator state gives the same output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def uniform(shape: tuple[int, ...], low: float, high: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Samples from U(low, high) on ``like``'s device in float32."""
    u = torch.rand(shape, generator=generator, device=like.device)
    return low + (high - low) * u


def bernoulli_mask(batch: int, p: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, 1, 1, 1) bool mask, True with probability ``p`` — which samples an op applies to."""
    return (torch.rand((batch, 1, 1, 1), generator=generator, device=like.device) < p)


def random_resized_crop(
    x: Tensor,
    size: int | tuple[int, int],
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random rectangle per sample, resize it to ``size`` (bilinear), and flip it horizontally.

    The crop's area is a fraction U(scale) of the image and its aspect ratio w/h is log-uniform in
    ``ratio`` (as torchvision's RandomResizedCrop). Where that rectangle does not fit in the image,
    its sides are clipped to the image rather than redrawn (torchvision retries ten times, then falls
    back to a centre crop): one pass, no data-dependent loop. Its centre is uniform over the positions
    where it fits. Crop, resize and flip are one affine resampling (``grid_sample``).
    """
    batch = x.shape[0]
    out_h, out_w = (size, size) if isinstance(size, int) else size
    area = uniform((batch,), scale[0], scale[1], x, generator)
    log_ratio = uniform((batch,), math.log(ratio[0]), math.log(ratio[1]), x, generator)
    aspect = torch.exp(log_ratio)
    # Sides as fractions of the image's sides: w·h = area, w/h = aspect (in units of the image's aspect).
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # Centres in normalised coordinates [-1, 1], uniform where the crop fits.
    centre_x = (1 - width) * uniform((batch,), -1.0, 1.0, x, generator)
    centre_y = (1 - height) * uniform((batch,), -1.0, 1.0, x, generator)
    flip = torch.rand((batch,), generator=generator, device=x.device) < flip_prob
    sign = 1.0 - 2.0 * flip.float()
    # theta maps output coordinates to input coordinates: x_in = w·x_out + c_x (mirrored when flipped).
    theta = torch.zeros((batch, 2, 3), device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, [batch, x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` as (B, 1, H, W); a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    # Scalar weights, not a tensor built from a list: that would be a blocking host-to-device copy on a GPU.
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(f·x)`` with one factor per sample, ``factor`` of shape (B,)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the sample's mean grey level: ``clamp(f·x + (1 − f)·mean(gray(x)))``."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the sample's own grey image: ``clamp(f·x + (1 − f)·gray(x))`` (3 channels only)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` turns (in [−0.5, 0.5], one per sample) in HSV space (3 channels only)."""
    r, g, b = x.unbind(dim=1)
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    # Hue in turns [0, 1), piecewise by which channel is largest.
    hue = torch.where(argmax == 0, (g - b) / safe_delta, torch.where(argmax == 1, 2 + (b - r) / safe_delta, 4 + (r - g) / safe_delta))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    # HSV → RGB with the closed form c_k = v − v·s·clamp(min(k', 4 − k'), 0, 1), k' = (n + 6h) mod 6.
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # (5, 3, 1), made on the device
    k = torch.remainder(n + 6 * hue.unsqueeze(1), 6)
    v, s = maxc.unsqueeze(1), saturation.unsqueeze(1)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """(B, kernel_size) normalised 1-D Gaussian kernels, one per sigma."""
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    kernels = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with one sigma per sample (reflect padding), ``kernel_size`` odd."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"blur kernel_size must be a positive odd number, got {kernel_size}")
    batch, channels, height, width = x.shape
    pad = kernel_size // 2
    kernels = gaussian_kernels(sigma.to(x.dtype), kernel_size).repeat_interleave(channels, dim=0)  # (B·C, k)
    # One grouped convolution per axis: every (sample, channel) plane gets its own kernel.
    planes = x.reshape(1, batch * channels, height, width)
    planes = F.conv2d(F.pad(planes, (pad, pad, 0, 0), mode="reflect"), kernels.view(-1, 1, 1, kernel_size), groups=batch * channels)
    planes = F.conv2d(F.pad(planes, (0, 0, pad, pad), mode="reflect"), kernels.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return planes.view(batch, channels, height, width)


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert the pixels at or above ``threshold``: ``x ≥ t → 1 − x``."""
    return torch.where(x >= threshold, 1 - x, x)
