"""Datasets by name: :func:`load_dataset` is the one entry point the training loop uses."""

from __future__ import annotations

import os

from nocollapse.data.cifar import load_cifar
from nocollapse.data.dataset import ImageDataset
from nocollapse.data.fashion_mnist import load_fashion_mnist
from nocollapse.data.folder import load_image_folder
from nocollapse.errors import UserError

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "image-folder")
SPLITS = ("train", "test")


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *, image_size: int = 32) -> ImageDataset:
    """Load ``split`` ("train" or "test", the official held-out split) of dataset ``name`` (one of DATASETS).

    ``data_dir`` is searched first, then ``$NOCOLLAPSE_DATA_DIR``, then system copies (Fashion-MNIST from the
    Debian package); for "image-folder" it is required and holds ``train/<class>/`` and ``test/<class>/``.
    ``image_size`` is the square side image-folder images are resized to; the other datasets keep their native
    size (28 for Fashion-MNIST, 32 for CIFAR). Raises UserError saying what to do when files are missing or bad.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose 'train' or 'test'")
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, data_dir)
    return load_image_folder(split, data_dir, image_size=image_size)
