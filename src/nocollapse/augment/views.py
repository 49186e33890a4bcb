"""View generation: the augmentation recipe of a method, applied to a whole batch at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nocollapse.augment import ops
from nocollapse.rules import FINITE, Rule, first_violation, integer, optional, ordered_pair, real, shown, tuple_of


@dataclass
class AugmentConfig:
    """How the M views of each image are drawn. Fields holding a tuple of per-view values (``blur_prob``,
    ``solarize_prob``) give view m the value at m modulo the tuple's length: BYOL's asymmetric recipe
    is ``blur_prob=(1.0, 0.1)``, ``solarize_prob=(0.0, 0.2)``."""

    num_views: int = 2  # views per image (BYOL 2, W-MSE 4 uses 4)
    crop_size: int | None = None  # output side in pixels; None keeps the dataset's image side
    crop_scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image; raise the minimum for small images
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range, sampled log-uniformly
    flip_prob: float = 0.5  # horizontal flip
    jitter_prob: float = 0.8  # probability of colour jitter (its four ops in random order)
    brightness: float = 0.4  # factor drawn from U(1 − b, 1 + b)
    contrast: float = 0.4  # factor drawn from U(1 − c, 1 + c)
    saturation: float = 0.2  # 3-channel images only
    hue: float = 0.1  # shift in turns drawn from U(−h, h); 3-channel images only
    grayscale_prob: float = 0.2  # 3-channel images only
    blur_prob: tuple[float, ...] = (1.0, 0.1)  # per view
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels, drawn uniformly
    blur_kernel_fraction: float = 0.1  # kernel side ≈ this fraction of the image side (odd, at least 3)
    solarize_prob: tuple[float, ...] = (0.0, 0.2)  # per view
    mean: tuple[float, ...] = field(default_factory=tuple)  # per-channel normalisation; empty = none
    std: tuple[float, ...] = field(default_factory=tuple)  # per-channel standard deviation, paired with mean

    def validate(self) -> None:
        """Raise ValueError ``augment.KEY=VALUE: must be ALLOWED`` for the first field out of range (:data:`AUGMENT_RULES`)."""
        violation = first_violation(dataclasses.asdict(self), AUGMENT_RULES, prefix="augment.")
        if violation:
            raise ValueError(violation)
        if len(self.mean) != len(self.std):
            raise ValueError(f"augment.std={shown(self.std)}: must be as many values as augment.mean ({len(self.mean)}), one per channel")


PROBABILITY = real(0, 1)
AUGMENT_RULES: dict[str, Rule] = {
    "num_views": integer(2, note=" (a method compares views)"),
    "crop_size": optional(integer(4, note=" (pixels)"), "the dataset's image side"),
    "crop_scale": ordered_pair(0, 1, note=" (crop area as a fraction of the image)"),
    "crop_ratio": ordered_pair(0),
    "flip_prob": PROBABILITY,
    "jitter_prob": PROBABILITY,
    "brightness": PROBABILITY,
    "contrast": PROBABILITY,
    "saturation": PROBABILITY,
    "hue": real(0, 0.5),
    "grayscale_prob": PROBABILITY,
    "blur_prob": tuple_of(PROBABILITY, least=1, note=" (view m uses value m modulo their number)"),
    "blur_sigma": ordered_pair(0),
    "blur_kernel_fraction": real(0, 1, low_open=True),
    "solarize_prob": tuple_of(PROBABILITY, least=1, note=" (view m uses value m modulo their number)"),
    "mean": tuple_of(FINITE, note=", one per channel (none: no normalisation)"),
    "std": tuple_of(real(0, low_open=True), note=", one per channel"),
}


def selects_by_index(device: torch.device) -> bool:
    """Whether ops that apply to some samples gather those samples (CPU: finding them costs nothing) rather
    than transform the whole batch and select with ``where`` (GPU: finding them would sync the host)."""
    return device.type == "cpu"


def apply_in_order(x: Tensor, adjustments: list[tuple[Callable[[Tensor, Tensor], Tensor], Tensor]], order: Tensor, *,
                   by_index: bool) -> Tensor:
    """Apply to each sample i of ``x`` the adjustments in the order ``order[i]`` (a permutation of their indices).

    ``by_index``: at each position, each adjustment runs on just the samples that take it there, gathered
    and written back into ``x`` in place (so ``x`` must be the caller's own intermediate tensor): every
    sample gets one adjustment per position, A passes for A adjustments. Finding those samples is a host
    sync on a GPU, free on a CPU. Otherwise every adjustment runs on the whole batch at every position and
    ``torch.where`` keeps the chosen one: A² passes, but no sync and no gather, and ``x`` is left as it
    is. Both give the same views; use the returned tensor.
    """
    for position in range(len(adjustments)):
        chosen = order[:, position]
        if by_index:
            # In place is safe: each adjustment reads and writes only the rows that take it here.
            for index, (adjust, parameter) in enumerate(adjustments):
                rows = (chosen == index).nonzero().squeeze(1)
                x.index_copy_(0, rows, adjust(x.index_select(0, rows), parameter.index_select(0, rows)))
        else:
            step = x
            for index, (adjust, parameter) in enumerate(adjustments):
                step = torch.where(chosen.view(-1, 1, 1, 1) == index, adjust(x, parameter), step)
            x = step
    return x


def apply_to_some(x: Tensor, chosen: Tensor, transform: Callable[[Tensor, Tensor | None], Tensor], *, by_index: bool) -> Tensor:
    """``x`` with ``transform`` applied to the samples where the (n,) bool ``chosen`` is true.

    ``transform(y, rows)`` maps samples ``y``: the rows ``rows`` of ``x``, or all of ``x`` when ``rows`` is
    None (then the caller's per-sample parameters are used whole). ``by_index`` as in :func:`apply_in_order`:
    transform just the chosen samples and write them into ``x`` in place (a host sync on a GPU), or
    transform all of them and keep the chosen with ``where``. Use the returned tensor.
    """
    if by_index:
        rows = chosen.nonzero().squeeze(1)
        if rows.numel() == 0:  # nothing to transform (an op such as the blur's padding cannot take an empty batch)
            return x
        return x.index_copy_(0, rows, transform(x.index_select(0, rows), rows))
    return torch.where(chosen.view(-1, 1, 1, 1), transform(x, None), x)


def per_view(values: tuple[float, ...], num_views: int, batch: int, device: torch.device) -> Tensor:
    """(num_views·batch,) tensor holding view m's value for the m-th block of ``batch`` samples."""
    per_view_values = torch.tensor([values[m % len(values)] for m in range(num_views)])
    return per_view_values.repeat_interleave(batch).to(device)


def blur_kernel_size(image_side: int, fraction: float) -> int:
    """Odd kernel side ≈ ``fraction`` of the image side, at least 3 (BYOL: 23 px at 224 px)."""
    size = max(3, round(fraction * image_side))
    return size if size % 2 == 1 else size + 1


class ViewGenerator:
    """Turns a uint8 batch into M augmented, normalised float views, all samples and views at once.

    ``views = ViewGenerator(config)(images, generator)`` maps (B, C, H, W) uint8 to (M, B, C, S, S)
    float32 on the images' device. The M copies of the batch go through each op together, with
    per-sample parameters, so the cost is a few batched kernels whatever M and B.
    """

    def __init__(self, config: AugmentConfig) -> None:
        config.validate()
        self.config = config
        # Constant tensors per (device, batch), made once: building them from Python lists every step
        # would be a blocking host-to-device copy on a GPU.
        self._constants: dict[tuple[torch.device, int], dict[str, Tensor]] = {}

    def _constants_for(self, device: torch.device, batch: int) -> dict[str, Tensor]:
        key = (device, batch)
        if key not in self._constants:
            cfg = self.config
            self._constants[key] = {
                "blur_p": per_view(cfg.blur_prob, cfg.num_views, batch, device),
                "solarize_p": per_view(cfg.solarize_prob, cfg.num_views, batch, device),
                "mean": torch.tensor(cfg.mean or (0.0,)).view(1, -1, 1, 1).to(device),
                "std": torch.tensor(cfg.std or (1.0,)).view(1, -1, 1, 1).to(device),
            }
        return self._constants[key]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.config
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        batch, channels, height, _ = images.shape
        views = cfg.num_views
        size = cfg.crop_size or height
        n = views * batch
        # (M·B, C, S, S), view-major: a new tensor, which the steps below may write into.
        x = ops.random_resized_crop((images / 255).to(torch.float32), size, copies=views, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                                    flip_prob=cfg.flip_prob, generator=generator)
        by_index = selects_by_index(x.device)
        x = self._colour_jitter(x, generator)
        if channels == 3 and cfg.grayscale_prob > 0:
            gray = ops.bernoulli_mask(n, cfg.grayscale_prob, x, generator).view(-1)
            x = apply_to_some(x, gray, lambda y, rows: ops.grayscale(y).expand_as(y), by_index=by_index)
        constants = self._constants_for(x.device, batch)
        if any(p > 0 for p in cfg.blur_prob[:views]):
            sigma = ops.uniform((n,), cfg.blur_sigma[0], cfg.blur_sigma[1], x, generator)
            kernel = blur_kernel_size(size, cfg.blur_kernel_fraction)
            apply = torch.rand((n,), generator=generator, device=x.device) < constants["blur_p"]
            x = apply_to_some(x, apply, lambda y, rows: ops.gaussian_blur(y, sigma if rows is None else sigma[rows], kernel), by_index=by_index)
        if any(p > 0 for p in cfg.solarize_prob[:views]):
            apply = torch.rand((n,), generator=generator, device=x.device) < constants["solarize_p"]
            x = apply_to_some(x, apply, lambda y, rows: ops.solarize(y), by_index=by_index)
        if cfg.mean:
            x = x.sub_(constants["mean"]).div_(constants["std"])
        return x.view(views, batch, channels, size, size)

    def _colour_jitter(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Brightness, contrast, saturation and hue in an order drawn per sample, on a fraction ``jitter_prob``.

        Writes into ``x`` where it selects by index (CPU); use the returned tensor."""
        cfg = self.config
        n, channels = x.shape[0], x.shape[1]
        # (adjustment, its per-sample parameter of shape (n,))
        adjustments: list[tuple[Callable[[Tensor, Tensor], Tensor], Tensor]] = []
        if cfg.brightness > 0:
            adjustments.append((ops.adjust_brightness, ops.uniform((n,), 1 - cfg.brightness, 1 + cfg.brightness, x, generator)))
        if cfg.contrast > 0:
            adjustments.append((ops.adjust_contrast, ops.uniform((n,), 1 - cfg.contrast, 1 + cfg.contrast, x, generator)))
        if channels == 3 and cfg.saturation > 0:
            adjustments.append((ops.adjust_saturation, ops.uniform((n,), 1 - cfg.saturation, 1 + cfg.saturation, x, generator)))
        if channels == 3 and cfg.hue > 0:
            adjustments.append((ops.adjust_hue, ops.uniform((n,), -cfg.hue, cfg.hue, x, generator)))
        if not adjustments or cfg.jitter_prob == 0:
            return x
        # Per-sample random order: at position k each sample applies the adjustment its permutation puts there.
        order = torch.argsort(torch.rand((n, len(adjustments)), generator=generator, device=x.device), dim=1)
        apply = ops.bernoulli_mask(n, cfg.jitter_prob, x, generator).view(-1)
        by_index = selects_by_index(x.device)

        def jitter(y: Tensor, rows: Tensor | None) -> Tensor:
            if rows is None:
                return apply_in_order(y, adjustments, order, by_index=by_index)
            return apply_in_order(y, [(adjust, parameter[rows]) for adjust, parameter in adjustments], order[rows], by_index=by_index)

        return apply_to_some(x, apply, jitter, by_index=by_index)
