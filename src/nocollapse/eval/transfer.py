"""Transfer: the frozen encoder scored on other datasets, their images converted to the encoder's input.

``eval.transfer=cifar10,image-folder:/data/leaves`` scores kNN and the linear probe (fitted on the target's train
split, scored on its test split) of the trained encoder beside the target's own baselines: its raw pixels and the
same architecture at the run's initialisation. How a target's uint8 images become the encoder's:

* **channels**: RGB → grey is the luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, what Pillow's ``"L"`` mode
  computes); grey → RGB repeats the channel; other channel counts are refused;
* **size**: resized to the encoder's side with bilinear interpolation and antialiasing (``F.interpolate``,
  ``antialias=True``: a 96 → 28 px reduction averages, it does not alias), then rounded back to uint8. An image
  folder is decoded at the encoder's side directly (its reader centre-crops and resizes);
* **normalisation**: the run's ``augment.mean``/``augment.std``, as for its own images: the encoder's input
  statistics are part of the encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nocollapse.data import ImageDataset
from nocollapse.data.registry import DATASETS, dataset_splits, load_dataset
from nocollapse.errors import UserError

LUMINANCE = (0.299, 0.587, 0.114)
CHUNK = 4096  # images converted at a time: float copies of a whole 50k-image split would take GBs


@dataclass(frozen=True)
class TransferTarget:
    """One ``eval.transfer`` item: a dataset name and, optionally, where its files are."""

    dataset: str
    data_dir: str | None = None

    @classmethod
    def parse(cls, text: str) -> TransferTarget:
        """``NAME`` or ``NAME:DIR`` (the directory may itself hold colons)."""
        name, sep, directory = text.partition(":")
        if name not in DATASETS:
            raise UserError(f"eval.transfer={text}: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, as NAME or NAME:DIR")
        if name == "image-folder" and not directory:
            raise UserError(f"eval.transfer={text}: an image folder needs its directory, image-folder:DIR (with DIR/train/<class>/ and DIR/test/<class>/)")
        return cls(name, directory or None)

    @property
    def label(self) -> str:
        return f"{self.dataset}:{self.data_dir}" if self.data_dir else self.dataset

    def check_splits(self) -> None:
        """A UserError unless the target has labelled train and test splits (checked before any scoring starts)."""
        splits = dataset_splits(self.dataset, self.data_dir)
        if not {"train", "test"} <= set(splits):
            raise UserError(f"eval.transfer={self.label}: transfer needs labelled train and test splits; {self.dataset} here has "
                            f"{', '.join(splits) or 'none'} (an image folder needs DIR/train/<class>/ and DIR/test/<class>/)")


def to_encoder_input(images: Tensor, channels: int, size: int) -> Tensor:
    """uint8 (N, C, H, W) → uint8 (N, ``channels``, ``size``, ``size``): the channel conversion and resize of the module
    docstring; returned unchanged when it already fits."""
    have = images.shape[1]
    if (have, images.shape[-2], images.shape[-1]) == (channels, size, size):
        return images
    if {have, channels} - {1, 3}:
        raise UserError(f"cannot convert {have}-channel images to the encoder's {channels} channels (only grey ↔ RGB)")
    chunks = []
    for start in range(0, len(images), CHUNK):
        x = images[start : start + CHUNK].float()
        if have == 3 and channels == 1:
            x = torch.tensordot(x, torch.tensor(LUMINANCE), dims=([1], [0])).unsqueeze(1)
        elif have == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        chunks.append(x.round().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def describe_conversion(source: tuple[int, ...], channels: int, size: int) -> str:
    """``3×32×32 → 1×28×28 (luminance, resized)``, or ``as is``."""
    have, height, width = source
    steps = (["luminance"] if have == 3 and channels == 1 else ["grey repeated"] if have == 1 and channels == 3 else []) + \
            (["bilinear antialiased resize"] if (height, width) != (size, size) else [])
    return f"{have}×{height}×{width} → {channels}×{size}×{size}" + (f" ({', '.join(steps)})" if steps else " (as is)")


def load_target(target: TransferTarget, channels: int, size: int, *, cache_dir: str | None = None,
                log: Callable[[str], object] = print) -> tuple[ImageDataset, ImageDataset, str]:
    """The target's labelled train and test splits in the encoder's input format, and the conversion made."""
    target.check_splits()
    folder_size = size if target.dataset == "image-folder" else 0
    loaded = [load_dataset(target.dataset, split, target.data_dir, image_size=folder_size, cache_dir=cache_dir, log=log)
              for split in ("train", "test")]
    conversion = describe_conversion(tuple(loaded[0].images.shape[1:]), channels, size)
    if target.dataset == "image-folder":
        conversion = f"decoded at {size} px (centre crop, resize), {conversion}"
    converted = []
    for dataset in loaded:
        images = dataset.images if isinstance(dataset.images, Tensor) else dataset.in_memory()
        converted.append(ImageDataset(images=to_encoder_input(images, channels, size), labels=dataset.labels, classes=dataset.classes,
                                      name=dataset.name))
    return converted[0], converted[1], conversion
